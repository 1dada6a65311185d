"""ThreadCommit: the index writer's batches, committed by the association threads that
wait for them, without the event loop (SQLite file).

The common C-STORE write is one autocommitted INSERT of instance rows whose study and
series the writer has cached, and whose study sets hold their values already
(index/batch_insert.py). Through the loop that INSERT costs a wake-up of the loop for
the hand-off, the writer task's step, a hop to aiosqlite's connection thread and a
wake-up of the loop for its answer: with two associations per worker, ~0.8 ms of the
loop's CPU and ~0.4 ms of aiosqlite's thread per instance (docs/performance.md,
"Results: the common batch committed by the association threads"). A new study costs
more: ~10 statements, ~9 ms of the loop's CPU through SQLAlchemy's asyncio adapter.
Here the threads that wait for their rows take turns as the group's leader: one that
finds no commit under way writes every row queued meanwhile, on a sqlite3 connection
of its own, and wakes the others; a row that came too late for that batch is written
by the next leader, one of the threads waiting for it. The cached rows go as the one
INSERT; the others (a new patient, study or series, a modality or SOP class new to the
study) as one transaction of the writer's general path (`IndexWriter.write_general`,
synchronous), on a SQLAlchemy connection over the same sqlite3 connection. Group
commit without a thread hop.

Only a SQLite file (PostgreSQL keeps the loop's path: asyncpg lives on the loop), and
never a replacement. The loop's writer still takes: a replacement, every job of a batch
whose statement failed (it retries, and tells a duplicate from a stale key), every job
after another process removed rows, and every job while it is in a batch of its own.

Exclusion:
- With the loop's writer, in this process: it announces its batch (`loop_enter`) and
  waits for a leader under way before it takes the WriterLock; while it writes, no
  leader starts, and the jobs queued meanwhile are handed to it. The two never touch the
  index (or the writer's caches) at the same time.
- With other processes (workers, servers on the same file): the leader holds the same
  WriterLock around its writes. When another writer removed rows since the loop's
  writer last looked (the lock's generation moved), the cached keys may name other rows
  now: the batch goes to the loop's writer, which forgets them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from pacs_server.errors import IndexUnavailable
from pacs_server.index.jobs import Job, settle
from pacs_server.index.records import InstanceRecord
from pacs_server.index.rows import instance_row

if TYPE_CHECKING:
    from pacs_server.index.writer import IndexWriter

log = structlog.get_logger(__name__)


class ThreadFuture(concurrent.futures.Future[str | None]):
    """A job's answer; waiting for it (`result`) is what gets the row written: the
    waiting thread leads the next batch when no other thread is writing one."""

    def __init__(self, commit: ThreadCommit) -> None:
        super().__init__()
        self._commit = commit
        self.job: Job | None = None

    def result(self, timeout: float | None = None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self.job is not None
        self._commit.wait_for(self.job, deadline)
        return super().result(None if deadline is None
                              else max(0.0, deadline - time.monotonic()))


class ThreadCommit:
    """The association threads' side of one IndexWriter (SQLite file only)."""

    def __init__(self, writer: IndexWriter, loop: asyncio.AbstractEventLoop,
                 connect: Callable[[], sqlite3.Connection]) -> None:
        self._writer = writer
        self._loop = loop
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._general: Connection | None = None
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Job] = []
        self._leading = False             # a thread is writing a batch
        self._waiting = 0                 # threads inside wait_for
        self._loop_busy = False           # the loop's writer is in a batch
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self.batches = 0                  # single INSERTs written here (tests, benchmarks)
        self.general_batches = 0          # general-path transactions written here
        self.handed = 0                   # jobs given to the loop's writer

    # ------------------------------------------------------------ association threads
    def offer(self, record: InstanceRecord) -> ThreadFuture | None:
        """A future for `record`'s row, or None when the loop's writer must take it.

        Writes the batch at once, in this thread, when no other thread is writing one.
        """
        if self._loop_busy or self._closed:
            return None
        fut = ThreadFuture(self)
        job = Job(record, False, fut)
        fut.job = job
        with self._cond:
            if self._loop_busy or self._closed:
                return None
            self._pending.append(job)
            batch = self._take_lead()
        if batch:
            self._lead(batch)
        return fut

    def wait_for(self, job: Job, deadline: float | None) -> None:
        """Return once `job` is answered or handed to the loop's writer (whose answer
        the caller then waits for); lead a batch meanwhile when it falls to us.

        Raises:
            concurrent.futures.TimeoutError: `deadline` passed with the job not
                answered; a job not yet in a batch is withdrawn (never written).
        """
        while True:
            with self._cond:
                self._waiting += 1
                try:
                    batch = self._wait_locked(job, deadline)
                finally:
                    self._waiting -= 1
            if not batch:
                return
            self._lead(batch)

    def _wait_locked(self, job: Job, deadline: float | None) -> list[Job]:
        while not job.future.done() and not job.handed:
            batch = self._take_lead()
            if batch:
                return batch
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if job in self._pending:
                    self._pending.remove(job)
                raise concurrent.futures.TimeoutError
            self._cond.wait(remaining)
        return []

    def _take_lead(self) -> list[Job]:
        """(Under the lock.) The pending jobs, when this thread may write them now; with
        the loop's writer in a batch (or stopped) they are handed to it instead."""
        if self._leading or not self._pending:
            return []
        batch, self._pending = self._pending, []
        if self._loop_busy or self._closed:
            self._hand_locked(batch)
            return []
        self._leading = True
        return batch

    def _lead(self, batch: list[Job]) -> None:
        """Write `batch` (this thread leads), then what queued meanwhile if nobody
        waits for it (its caller has not asked yet, or gave up: it must not sit here
        until the next C-STORE)."""
        while batch:
            left, stop = batch, True
            try:
                left = self._write(batch)
                stop = False
            except Exception as exc:
                # Not this caller's error: the loop's writer answers what is unanswered.
                log.error("index.thread_commit_failed", rows=len(batch), exc_info=exc)
                stop = False
            finally:
                with self._cond:
                    self._hand_locked([j for j in left if not j.future.done()])
                    batch = []
                    if self._pending and not self._waiting:
                        if stop or self._loop_busy or self._closed:
                            self._hand_locked(self._pending)
                        else:
                            batch = self._pending
                        self._pending = []
                    if not batch:
                        self._leading = False
                        if self._drained is not None:
                            self._loop.call_soon_threadsafe(_done, self._drained)
                            self._drained = None
                    self._cond.notify_all()

    def _write(self, batch: list[Job]) -> list[Job]:
        """Commit `batch`: the rows the caches vouch for as the one INSERT, the others
        (new patients, studies, series, study sets) through the writer's general path
        in one transaction. Returns the jobs left for the loop's writer: all of them
        when another process removed rows, those of a statement that failed."""
        w = self._writer
        lock = w._lock
        assert lock is not None
        lock.acquire()
        commits: list[int] = []
        try:
            if lock.generation != w._generation:
                return batch
            rows: list[dict[str, Any]] = []
            known: list[Job] = []
            rest: list[Job] = []
            for job in batch:
                if job.future.done():      # withdrawn by a timeout
                    continue
                pk = w.cached_series_pk(job.record)
                if pk is None:
                    rest.append(job)
                else:
                    known.append(job)
                    rows.append(instance_row(job.record, pk))
            if self._conn is None:
                self._conn = self._connect()
            if rows:
                try:
                    # One statement in autocommit: committed, at the configured
                    # synchronous level, when it returns.
                    self._conn.execute(w._insert.statement(len(rows)),
                                       w._insert.parameters(rows)).close()
                except sqlite3.Error as exc:
                    # A duplicate, a key removed behind our back, a broken file: the
                    # loop's writer looks everything up again and answers each job.
                    log.debug("index.thread_commit_deferred", rows=len(rows),
                              error=str(exc)[:200])
                    w._forget_caches()
                    return known + rest
                # Answered before anything else can fail: these rows are committed, and
                # a job handed on after its own commit would come back as a duplicate.
                for job in known:
                    settle(job.future, None)
                commits.append(len(rows))
                self.batches += 1
            if rest:
                try:
                    _, notices = w.write_general(self._general_connection(), rest)
                except Exception as exc:
                    # Rolled back. The caches may hold keys of rows that never were.
                    log.debug("index.thread_commit_deferred", rows=len(rest),
                              error=str(exc)[:200])
                    w._forget_caches()
                    self._drop_general_connection()
                    return rest
                for job in rest:
                    settle(job.future, None)
                commits.append(len(rest))
                self.general_batches += 1
                for notice in notices:
                    log.warning(**notice)
            waited = lock.waited_s
        finally:
            lock.release()
        try:
            if w._on_lock_wait is not None:
                w._on_lock_wait(waited)
            for size in commits:
                if w._on_commit is not None:
                    w._on_commit(size)
        except Exception as exc:
            log.warning("index.metrics_failed", error=str(exc)[:200])
        return []

    def _general_connection(self) -> Connection:
        """A synchronous SQLAlchemy connection over this thread side's sqlite3
        connection, for the writer's general path (`IndexWriter.write_general`)."""
        if self._general is None:
            conn = self._conn
            assert conn is not None
            engine = create_engine("sqlite://", creator=lambda: conn, poolclass=StaticPool)
            # The writer's transactions take SQLite's write lock before their first
            # read, as on the loop's engine (index/engine.py).
            event.listen(engine, "begin", lambda c: c.exec_driver_sql("BEGIN IMMEDIATE"))
            self._general = engine.connect()
        return self._general

    def _drop_general_connection(self) -> None:
        general, self._general = self._general, None
        if general is not None:
            with contextlib.suppress(Exception):
                general.close()

    def _hand_locked(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.handed = True
            self.handed += 1
            try:
                self._loop.call_soon_threadsafe(self._writer._enqueue, job)
            except RuntimeError:          # the loop is closed
                settle(job.future, exc=IndexUnavailable("server is shutting down"))

    # ------------------------------------------------------------ the loop's writer
    async def loop_enter(self) -> None:
        """Before a batch of the loop's writer: no leader writes until `loop_exit`."""
        with self._cond:
            self._loop_busy = True
            if not self._leading:
                return
            self._drained = self._loop.create_future()
            drained = self._drained
        await drained

    def loop_exit(self) -> None:
        with self._cond:
            self._loop_busy = False
            self._cond.notify_all()

    async def close(self) -> None:
        """No more batches here; what queues is handed to the (stopped) loop's writer."""
        await self.loop_enter()
        with self._cond:
            self._closed = True
            self._hand_locked(self._pending)
            self._pending = []
            self._cond.notify_all()
        self._drop_general_connection()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
