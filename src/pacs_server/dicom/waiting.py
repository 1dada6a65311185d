"""Condition, Event and Queue for an association's threads, built cheaply.

An association builds about twenty of them (five queues, a handful of events), and
`threading.Condition(lock)` over a plain `Lock` raises and catches three
AttributeErrors while it looks for the RLock-only `_release_save`, `_acquire_restore`
and `_is_owned`: 5.7 µs per condition here, four per queue, the largest single function
of an association's set-up (docs/performance.md "Results: the CPU of one
association"). These build the same objects without the lookups; waiting, notifying and
the queues' behaviour are the standard library's own methods, unchanged.

Upstream change that would remove this module: CPython's Condition taking the plain
Lock's fallbacks without the try/except (or pynetdicom accepting queues it is given).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any


class LockCondition(threading.Condition):
    """`threading.Condition(lock)` for a plain `threading.Lock` (not an RLock)."""

    def __init__(self, lock: Any = None) -> None:   # noqa: D107 - see the class
        # threading.Condition.__init__, with the lookups that fail for a Lock left out:
        # the class's own _release_save / _acquire_restore / _is_owned serve a Lock.
        if lock is None:
            lock = threading.Lock()
        self._lock = lock
        self.acquire = lock.acquire  # type: ignore[method-assign]
        self.release = lock.release  # type: ignore[method-assign]
        self._waiters: deque[Any] = deque()


class LightEvent(threading.Event):
    """`threading.Event()` whose condition is a LockCondition."""

    def __init__(self) -> None:
        self._cond = LockCondition(threading.Lock())
        self._flag = False


class LightQueue(queue.Queue[Any]):
    """`queue.Queue(maxsize)` whose three conditions are LockConditions."""

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._init(maxsize)
        self.mutex = threading.Lock()
        self.not_empty = LockCondition(self.mutex)
        self.not_full = LockCondition(self.mutex)
        self.all_tasks_done = LockCondition(self.mutex)
        self.unfinished_tasks = 0
        self.is_shutdown = False    # Python 3.13's Queue.shutdown() reads it
