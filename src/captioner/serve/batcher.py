"""Micro-batching: concurrent requests' images gathered into one model call, results handed back per request."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from captioner.search import Search

log = logging.getLogger("captioner.serve")

Captions = list[list[Any]]  # per image, best first: objects with .text, .words, .score, .log_prob, .attention (or None)


@dataclass
class _Job:
    images: list[Image.Image]
    search: Search  # requests with the same search share batches
    future: asyncio.Future[Captions]


def _fail(jobs: list[_Job], error: Exception) -> None:
    """Pass ``error`` to each request still waiting on ``jobs``."""
    for j in jobs:
        if not j.future.done():
            j.future.set_exception(error)


class Batcher:
    """Gathers concurrent requests into one model call: flush at ``max_batch`` images or after ``max_wait_ms``."""

    def __init__(self, run: Callable[[list[Image.Image], Search], Awaitable[Captions]], max_batch: int,
                 max_wait_ms: float) -> None:
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()

    async def submit(self, images: list[Image.Image], search: Search) -> Captions:
        """Queue images and wait for their captions; a request that times out or leaves drops its images at once
        (its job, skipped, waits in the queue without them)."""
        job = _Job(images, search, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        try:
            return await job.future
        finally:
            images.clear()

    async def loop(self) -> None:
        """Forever: take the first waiting job, gather more until full or timed out, run each search once.

        An unexpected error fails the requests at hand and is logged; the loop goes on serving."""
        while True:
            jobs = [await self.queue.get()]
            try:
                await self._gather(jobs)
                for search in dict.fromkeys(j.search for j in jobs):
                    await self._run([j for j in jobs if j.search == search], search)
            except Exception as e:
                log.exception("the batcher failed on %d requests; serving on", len(jobs))
                _fail(jobs, e)

    async def _gather(self, jobs: list[_Job]) -> None:
        """Add waiting jobs to ``jobs`` until they hold ``max_batch`` images or ``max_wait`` has passed."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.max_wait
        while sum(len(j.images) for j in jobs) < self.max_batch and (left := deadline - clock()) > 0:
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except (TimeoutError, asyncio.TimeoutError):  # two classes on Python 3.10, one since 3.11
                break

    async def _run(self, jobs: list[_Job], search: Search) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a request that timed out or left costs no model time
        if not jobs:
            return
        counts = [len(j.images) for j in jobs]  # a job that leaves during the call clears its list
        try:
            out = await self.run([im for j in jobs for im in j.images], search)
        except Exception as e:  # the model failed: every waiting request gets the error
            _fail(jobs, e)
            return
        for j, n in zip(jobs, counts, strict=True):
            if not j.future.done():  # a cancelled request (client gone) leaves a done future
                j.future.set_result(out[:n])
            out = out[n:]
