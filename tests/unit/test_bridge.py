"""dicom/bridge.py: LoopBridge against a real event loop running in another thread.

The tests themselves play the association thread: they block on the bridge while the
coroutines run on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import structlog

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.errors import IndexUnavailable


@dataclass
class LoopThread:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    seen: list[str] = field(default_factory=list)     # what the coroutines observed

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """A running event loop in a thread of its own, closed at teardown."""
    ev = asyncio.new_event_loop()
    thread = threading.Thread(target=ev.run_forever, name="bridge-loop", daemon=True)
    thread.start()
    lt = LoopThread(ev, thread)
    yield lt
    lt.stop()


async def answer(value: int) -> int:
    await asyncio.sleep(0)
    return value


def test_run_returns_the_coroutines_result(loop: LoopThread) -> None:
    assert LoopBridge(loop.loop, timeout_s=5).run(answer(42)) == 42


def test_run_executes_on_the_loops_thread(loop: LoopThread) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert LoopBridge(loop.loop, timeout_s=5).run(where()) == "bridge-loop"


def test_run_raises_the_coroutines_exception(loop: LoopThread) -> None:
    async def fail() -> None:
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        LoopBridge(loop.loop, timeout_s=5).run(fail())


def test_timeout_is_index_unavailable_and_cancels_the_work(loop: LoopThread) -> None:
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(IndexUnavailable, match="did not answer in time"):
        LoopBridge(loop.loop, timeout_s=0.05).run(hang())
    assert cancelled.wait(5), "the coroutine kept running after the timeout"


def test_per_call_timeout_wins(loop: LoopThread) -> None:
    bridge = LoopBridge(loop.loop, timeout_s=60)
    with pytest.raises(IndexUnavailable):
        bridge.run(asyncio.sleep(60), timeout_s=0.05)


def test_work_cancelled_on_the_loop_is_index_unavailable(loop: LoopThread) -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(IndexUnavailable, match="cancelled"):
        LoopBridge(loop.loop, timeout_s=5).run(cancelled())


def test_closed_loop_is_index_unavailable_and_the_coroutine_is_closed(
        loop: LoopThread) -> None:
    loop.stop()
    coro = answer(1)
    with pytest.raises(IndexUnavailable, match="shutting down"):
        LoopBridge(loop.loop, timeout_s=5).run(coro)
    # closed, so never "coroutine ... was never awaited" (a warning, an error here)
    assert coro.cr_frame is None


def test_run_carries_the_callers_log_context(loop: LoopThread) -> None:
    async def context() -> dict[str, object]:
        return structlog.contextvars.get_contextvars()

    def association_thread(out: list[dict[str, object]]) -> None:
        structlog.contextvars.bind_contextvars(assoc_id=7, calling_ae="SCU")
        out.append(LoopBridge(loop.loop, timeout_s=5).run(context()))

    out: list[dict[str, object]] = []
    worker = threading.Thread(target=association_thread, args=(out,))
    worker.start()
    worker.join(10)
    assert out == [{"assoc_id": 7, "calling_ae": "SCU"}]


def test_the_bridge_called_is_run(loop: LoopThread) -> None:
    assert LoopBridge(loop.loop, timeout_s=5)(answer(7)) == 7


# --------------------------------------------------------------------------- wait

def test_wait_returns_what_the_loop_settles(loop: LoopThread) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    loop.loop.call_soon_threadsafe(fut.set_result, 5)
    assert LoopBridge(loop.loop, timeout_s=5).wait(fut) == 5


def test_wait_raises_what_the_loop_sets(loop: LoopThread) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    loop.loop.call_soon_threadsafe(fut.set_exception, ValueError("bad row"))
    with pytest.raises(ValueError, match="bad row"):
        LoopBridge(loop.loop, timeout_s=5).wait(fut)


def test_wait_past_the_limit_is_index_unavailable_and_cancels(loop: LoopThread) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    with pytest.raises(IndexUnavailable, match="did not answer in time"):
        LoopBridge(loop.loop, timeout_s=60).wait(fut, timeout_s=0.05)
    assert fut.cancelled()


def test_wait_on_cancelled_work_is_index_unavailable(loop: LoopThread) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    fut.cancel()
    with pytest.raises(IndexUnavailable, match="cancelled"):
        LoopBridge(loop.loop, timeout_s=5).wait(fut)


# --------------------------------------------------------------------------- iterate

async def numbers(n: int, log: list[str], fail_at: int | None = None) -> AsyncIterator[int]:
    try:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError(f"failed at {i}")
            await asyncio.sleep(0)
            yield i
    finally:
        log.append(f"closed in {threading.current_thread().name}")


def test_iterate_yields_every_item_in_order(loop: LoopThread) -> None:
    items = list(LoopBridge(loop.loop, timeout_s=5).iterate(numbers(5, loop.seen)))
    assert items == [0, 1, 2, 3, 4]
    assert loop.seen == ["closed in bridge-loop"]


def test_iterate_of_nothing(loop: LoopThread) -> None:
    assert list(LoopBridge(loop.loop, timeout_s=5).iterate(numbers(0, loop.seen))) == []


def test_iterate_raises_what_the_iterator_raises(loop: LoopThread) -> None:
    got: list[int] = []
    with pytest.raises(RuntimeError, match="failed at 2"):
        for item in LoopBridge(loop.loop, timeout_s=5).iterate(numbers(5, loop.seen, 2)):
            got.append(item)
    assert got == [0, 1]


def test_leaving_early_closes_the_iterator_on_the_loop(loop: LoopThread) -> None:
    """C-CANCEL or an abort: the handler stops pulling, and the async iterator (holding a
    database cursor, in the server) is closed on the loop, not left suspended."""
    stream = LoopBridge(loop.loop, timeout_s=5).iterate(numbers(1000, loop.seen))
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert loop.seen == ["closed in bridge-loop"]


def test_an_item_that_takes_too_long_is_index_unavailable(loop: LoopThread) -> None:
    async def slow() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(60)
        yield 2

    got: list[int] = []
    with pytest.raises(IndexUnavailable):
        for item in LoopBridge(loop.loop, timeout_s=5).iterate(slow(), timeout_s=0.05):
            got.append(item)
    assert got == [1]


def test_iterate_on_a_closed_loop(loop: LoopThread) -> None:
    agen = numbers(3, loop.seen)
    loop.stop()
    with pytest.raises(IndexUnavailable):
        list(LoopBridge(loop.loop, timeout_s=5).iterate(agen))
