"""A write request of the index writer and how it is answered (index/writer.py, and
index/thread_commit.py for the rows association threads commit themselves)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

from pacs_server.index.records import InstanceRecord


@dataclass(eq=False)
class Job:
    record: InstanceRecord
    replace: bool
    # An asyncio future (add_instance) or a concurrent one (submit, another thread).
    future: asyncio.Future[str | None] | concurrent.futures.Future[str | None]
    handed: bool = False    # given by the association threads to the loop's writer


def settle(fut: asyncio.Future[str | None] | concurrent.futures.Future[str | None],
           result: str | None = None, exc: BaseException | None = None) -> None:
    """Give a job its answer, unless its caller gave up (a timeout cancels it, from the
    caller's thread for `submit`: hence the race caught here)."""
    if fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
        pass
