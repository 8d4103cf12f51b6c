"""Admission: the server holds at most so much at once (images, bytes of decoded pixels), and requests wait for room
in a fair queue, in arrival order, so that a large request is not overtaken forever by small ones that fit."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import HTTPException

RETRY_AFTER_S = 1  # what a 503 (server busy) tells the client to wait


class Admission:
    """Counts what the server holds, up to ``limit``. A request waits its turn in arrival order for room (behind at
    most ``max_waiting`` others); one that has not reached the head of the line within ``max_wait_s`` gets 503 with
    Retry-After (``max_wait_s`` 0: refused at once when there is no room). ``unit`` and ``scale`` word the 503."""

    def __init__(self, limit: int, unit: str = "images", scale: int = 1, max_wait_s: float = 0.0,
                 max_waiting: int = 256) -> None:
        self.limit, self.unit, self.scale, self.held = limit, unit, scale, 0
        self.max_wait_s, self.max_waiting = max_wait_s, max_waiting
        self.line: deque[tuple[int, asyncio.Future[None]]] = deque()  # waiting: amount, set when admitted

    @asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        """Hold room for ``amount`` during the block, once it is this request's turn; 503 when none comes in time."""
        if amount > self.limit:
            raise ValueError(f"{amount:,} is over the limit of {self.limit:,}: it would never be admitted")
        await self._enter(amount)
        try:
            yield
        finally:
            self.held -= amount
            self._admit()

    async def _enter(self, amount: int) -> None:
        if not self.line and self.held + amount <= self.limit:  # no await between check and update: no race
            self.held += amount
            return
        if self.max_wait_s <= 0 or len(self.line) >= self.max_waiting:
            raise self._busy()
        turn = asyncio.get_running_loop().create_future()
        self.line.append((amount, turn))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(turn), self.max_wait_s)
            except (TimeoutError, asyncio.TimeoutError):
                if not turn.done() and self.line[0][1] is not turn:  # still waiting (so in the line), not next
                    raise
                # next in line: not turned away (a large request would lose its place to every retrying small
                # one); room comes as the requests holding it finish, each within its own timeout
                await asyncio.shield(turn)
        except BaseException as e:  # timed out, or the request was cancelled (client gone, its own timeout)
            if turn.done() and not turn.cancelled():  # admitted just as it gave up: give the room back
                self.held -= amount
            turn.cancel()
            with suppress(ValueError):
                self.line.remove((amount, turn))
            self._admit()  # those behind it may fit now
            if isinstance(e, (TimeoutError, asyncio.TimeoutError)):  # two classes on Python 3.10, one since 3.11
                raise self._busy() from None
            raise

    def _admit(self) -> None:
        """Admit waiting requests from the head of the line while they fit; the head that does not fit blocks the
        rest (that is what makes it fair)."""
        while self.line:
            amount, turn = self.line[0]
            if turn.done():  # its request left
                self.line.popleft()
                continue
            if self.held + amount > self.limit:
                return
            self.line.popleft()
            self.held += amount
            turn.set_result(None)

    def _busy(self) -> HTTPException:
        return HTTPException(503, f"the server is busy ({self.held / self.scale:,.0f} of "
                                  f"{self.limit / self.scale:,.0f} {self.unit} in progress, {len(self.line)} "
                                  f"requests waiting): retry in {RETRY_AFTER_S} s",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
