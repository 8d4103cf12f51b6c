"""The server answers only for the hosts it serves (DNS rebinding), and its /docs page works offline."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_serve import model_dir  # noqa: F401 - a fixture
from typer.testing import CliRunner

from captioner.cli import app as cli
from captioner.serve import app as serve_app
from captioner.serve.app import create_app


def served_app(monkeypatch: pytest.MonkeyPatch, *args: str) -> FastAPI:
    """The app `captioner serve ARGS` would run (uvicorn is not started)."""
    apps: list[FastAPI] = []
    monkeypatch.setattr(serve_app.uvicorn, "run", lambda app, **kw: apps.append(app))
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 0, result.output
    return apps[0]


def status(app: FastAPI, host: str) -> int:
    with TestClient(app, base_url=f"http://{host}") as client:
        return client.get("/healthz").status_code


def test_a_rebinding_host_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A page on attacker.example whose name now resolves to 127.0.0.1 sends Host: attacker.example."""
    app = served_app(monkeypatch, "--model", str(model_dir))  # bound to 127.0.0.1 (the default)
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert status(app, host) == 200, host
    with TestClient(app, base_url="http://attacker.example:8000") as client:
        r = client.post("/v1/captions", files={"files": ("a.jpg", b"x")})
    assert r.status_code == 400 and "'attacker.example:8000' is not served here" in r.json()["detail"]
    assert "--allowed-hosts" in r.json()["detail"]
    assert status(app, "192.168.1.20:8000") == 400  # not an address this server is bound to


def test_allowed_hosts_and_every_address(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    named = served_app(monkeypatch, "--model", str(model_dir), "--allowed-hosts", "captions.example, cam.local")
    assert [status(named, h) for h in ("captions.example", "cam.local:80", "localhost")] == [200, 200, 400]
    everywhere = served_app(monkeypatch, "--model", str(model_dir), "--host", "0.0.0.0")
    assert [status(everywhere, h) for h in ("192.168.1.20:8000", "[fe80::1]", "localhost", "attacker.example")] == [
        200, 200, 200, 400]  # any of the machine's addresses; still no other name
    assert status(served_app(monkeypatch, "--model", str(model_dir), "--allowed-hosts", "*"), "any.example") == 200
    assert status(create_app(model_dir), "testserver") == 200  # an app embedded or tested: no check unless asked


def test_docs_load_nothing_from_the_network(model_dir: Path) -> None:  # noqa: F811
    with TestClient(create_app(model_dir)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert not re.search(r"https?://", page.text), page.text  # no CDN: it works offline
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) >= 3 and all(client.get(a).status_code == 200 for a in assets), assets
        assert client.get("/openapi.json").status_code == 200
