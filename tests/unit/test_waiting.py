"""dicom/waiting.py: the cheap Condition, Event and Queue hold exactly what the standard
library's build and behave as they do across threads."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from pacs_server.dicom.reactor import WakingQueue
from pacs_server.dicom.waiting import LightEvent, LightQueue, LockCondition


def later(delay: float, action: object) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))  # type: ignore[operator]
    thread.start()
    return thread


def test_the_same_fields_as_the_standard_library() -> None:
    lock = threading.Lock()
    assert vars(LockCondition(lock)).keys() == vars(threading.Condition(lock)).keys()
    assert vars(LightEvent()).keys() == vars(threading.Event()).keys()
    assert vars(LightEvent()._cond).keys() == vars(threading.Event()._cond).keys()
    # Python 3.13's Queue has is_shutdown; the light one has it on every version.
    assert vars(LightQueue()).keys() - {"is_shutdown"} == vars(queue.Queue()).keys() - {
        "is_shutdown"}
    light = LightQueue()
    assert light.not_empty._lock is light.not_full._lock is light.all_tasks_done._lock \
        is light.mutex


def test_condition_waits_for_a_notify_and_times_out() -> None:
    cond = LockCondition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond._is_owned()
    assert not cond._is_owned()
    with pytest.raises(RuntimeError):
        cond.notify()       # un-acquired: the standard library's check, kept

    woken: list[bool] = []

    def notify() -> None:
        with cond:
            cond.notify_all()

    with cond:
        thread = later(0.02, notify)
        woken.append(cond.wait(5))
    thread.join()
    assert woken == [True]


def test_event_set_wait_clear() -> None:
    event = LightEvent()
    assert not event.is_set() and event.wait(0.01) is False
    thread = later(0.02, event.set)
    assert event.wait(5) is True and event.is_set()
    thread.join()
    event.clear()
    assert not event.wait(0)


def test_queue_blocks_bounds_and_counts_tasks() -> None:
    q = LightQueue(maxsize=1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.put("a")
    with pytest.raises(queue.Full):
        q.put("b", timeout=0.01)
    thread = later(0.02, lambda: q.put("late"))
    assert q.get() == "a"
    assert q.get(timeout=5) == "late"
    thread.join()
    q.task_done()
    q.task_done()
    q.join()                # every task done: returns at once
    with pytest.raises(ValueError):
        q.task_done()


def test_waking_queue_wakes_on_every_put() -> None:
    calls: list[int] = []
    q = WakingQueue(lambda: calls.append(len(q.queue)))   # under the mutex: no qsize()
    q.put(1)
    q.put_nowait(2)
    assert calls == [1, 2] and q.get() == 1 and q.get_nowait() == 2
