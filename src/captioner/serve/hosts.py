"""The Host header check: a server answers only for the host names it serves, so that a web page cannot reach a
loopback server through DNS rebinding (its requests name the attacker's domain, resolved to 127.0.0.1)."""
from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "[::]")  # binding these serves every address of the machine


def host_name(header: str) -> str:
    """The host of a Host header, without its port, lower case ("[::1]:8000" -> "[::1]")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def default_hosts(bind: str) -> list[str]:
    """What a server bound to ``bind`` answers for: that address (an IPv6 one in brackets) and loopback's names."""
    bound = f"[{bind}]" if ":" in bind else bind
    return list(dict.fromkeys([bound.lower(), *LOOPBACK]))


def _is_address(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware: 400 for a request whose Host header is not one of ``allowed`` ("*": any). With 0.0.0.0 or
    [::] allowed (a server bound to every address) any IP address is too: DNS rebinding needs a name."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app, self.allowed = app, {host_name(h) for h in allowed}
        self.any_address = any(h in self.allowed for h in ANY_ADDRESS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        host = host_name(header)
        if host in self.allowed or (self.any_address and _is_address(host)):
            return await self.app(scope, receive, send)
        detail = (f"Host {header!r} is not served here (this server answers for {', '.join(sorted(self.allowed))}): "
                  "use one of those, or start `captioner serve` with --allowed-hosts naming it")
        await JSONResponse({"detail": detail}, 400)(scope, receive, send)
