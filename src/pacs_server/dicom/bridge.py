"""LoopBridge: the one door from pynetdicom's association threads into the event loop.

Handlers run in their association's own thread; everything that touches the index is
a coroutine on the loop. `run()` submits the coroutine and blocks this thread (never
the loop) until it finishes. run_coroutine_threadsafe copies the caller's contextvars,
so log context bound in the handler thread follows the work onto the loop.

`wait()` is the cheaper door for work that another thread can hand to the loop by
itself (the index writer's `submit`): it only waits for the future, under the same
time limit. The bridge is also callable as `run`, so the archive can be given the
bridge and find `wait` on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from pacs_server.errors import IndexUnavailable

T = TypeVar("T")


class LoopBridge:
    """Run coroutines on `loop` from other threads, with a time limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the loop and return its result (or raise its exception).

        Raises:
            IndexUnavailable: no answer within the time limit, or the loop is gone.
        """
        if self._loop.is_closed():
            coro.close()
            raise IndexUnavailable("server is shutting down")
        return self.wait(asyncio.run_coroutine_threadsafe(coro, self._loop), timeout_s)

    __call__ = run

    def wait(self, fut: concurrent.futures.Future[T], timeout_s: float | None = None) -> T:
        """The result of work already handed to the loop, with `run`'s time limit.

        Raises:
            IndexUnavailable: no answer within the time limit (the future is then
                cancelled), or the work was cancelled.
        """
        try:
            return fut.result(timeout_s if timeout_s is not None else self._timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise IndexUnavailable("the index did not answer in time") from None
        except concurrent.futures.CancelledError:
            raise IndexUnavailable("the request was cancelled (server shutting down)") from None

    def iterate(self, agen: AsyncIterator[T], timeout_s: float | None = None) -> Iterator[T]:
        """Pull items from an async iterator on the loop, one at a time, in this thread.

        Lets a C-FIND handler stream results: each item crosses as soon as it exists.
        Closing the returned generator (C-CANCEL, abort) closes `agen` on the loop.
        """
        sentinel = object()

        async def _next() -> Any:
            try:
                return await agen.__anext__()
            except StopAsyncIteration:
                return sentinel

        try:
            while True:
                item = self.run(_next(), timeout_s)
                if item is sentinel:
                    return
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                try:
                    self.run(aclose(), 5.0)
                except Exception:  # closing is best effort
                    pass
