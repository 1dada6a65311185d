"""IndexWriter: every write to the archive index, its transactions and group commit.

Writes go through one writer task. While a transaction commits, new requests queue up
and the next transaction takes all of them (up to `commit_batch`), so N concurrent
C-STOREs cost one commit, yet each caller resumes only once its own row is committed.
The writer caches the primary keys it has seen. Other processes (workers, nodes) may
write the same index, each with its own writer:
- a patient, study or series another process created in between fails the unique key,
  and a cached key it removed fails the foreign key on PostgreSQL (keys are never
  reused); both are retried with the caches dropped (bounded, counted in `retries`);
  never a conflict on the instance's own UID: that is a duplicate, answered as one;
- SQLite reuses the rowid of a deleted last row, so a stale key may name another row
  without failing any constraint: the writers of a SQLite file take an flock around each
  transaction (`WriterLock`, which also hands the write lock over without SQLite's
  busy-handler sleeps) that counts removals, and a writer forgets its keys when another
  one removed rows;
- the study's ModalitiesInStudy/SOPClassesInStudy sets are merged with the row read
  under a row lock before they are written, so no writer loses another's values.

A patient is found by (PatientID, IssuerOfPatientID); an instance with an empty
PatientID gets the patient of its study, or a new one, never another study's.

Callers on the loop await `add_instance`; an association thread calls `submit`, which
puts the job on the writer's queue with one `call_soon_threadsafe` and returns a
`concurrent.futures.Future` that the writer settles: no Task, coroutine or chained
future per C-STORE on the loop (docs/performance.md, "the event loop per stored
instance"). On a SQLite file the common batch does not reach the loop at all: the
association threads waiting for it commit it themselves (index/thread_commit.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.schema import Table

from pacs_server.errors import DuplicateInstance, IndexUnavailable, PacsError
from pacs_server.index.attributes import QR_ATTRIBUTES
from pacs_server.index.batch_insert import MAX_ROWS, BatchInsert
from pacs_server.index.engine import WriterLock
from pacs_server.index.jobs import Job as _Job
from pacs_server.index.jobs import settle as _settle
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.prepared import Prepared, PreparedInsert
from pacs_server.index.records import InstanceRecord
from pacs_server.index.rows import instance_row, level_values, series_row
from pacs_server.index.text import join_values
from pacs_server.index.thread_commit import ThreadCommit

log = structlog.get_logger(__name__)

_STOP = object()
_MAX_RETRIES = 5

# Statements of the general path, built once: compiling expressions per instance costs
# more than executing them, and on SQLite they run on the cursor (index/prepared.py).
_INSERT_INSTANCE = PreparedInsert(cast(Table, Instance.__table__))
_INSERT_SERIES = PreparedInsert(cast(Table, Series.__table__), returning=True)
_INSERT_STUDY = PreparedInsert(cast(Table, Study.__table__), returning=True)
_INSERT_PATIENT = PreparedInsert(cast(Table, Patient.__table__), returning=True)
_SERIES_BY_UID = Prepared(select(Series.pk).where(
    Series.series_instance_uid == bindparam("uid")))
_STUDY_BY_UID = Prepared(select(Study.pk, Study.patient_pk, Study.modalities,
                                Study.sop_classes).where(
    Study.study_instance_uid == bindparam("uid")))
_STUDY_SETS_ROW = Prepared(select(Study.modalities, Study.sop_classes).where(
    Study.pk == bindparam("pk")).with_for_update())
_UPDATE_STUDY_SETS = Prepared(text(
    "UPDATE studies SET modalities = :mods, sop_classes = :sops WHERE pk = :pk"))

# The patient key, and the patient attributes that follow the newest study.
_PATIENT_KEY = ("patient_id", "issuer_of_patient_id")
_FOLLOWING = tuple(r for r in QR_ATTRIBUTES.recorded("PATIENT") if r.column not in _PATIENT_KEY)
_PATIENT_BY_KEY = Prepared(select(
    Patient.pk, *(cast(Table, Patient.__table__).c[r.column] for r in _FOLLOWING)).where(
    *(cast(Table, Patient.__table__).c[c] == bindparam(c) for c in _PATIENT_KEY)))


@dataclass
class _Batch:
    """Per-transaction bookkeeping: study attribute sets written once at the end, and
    the warnings to log once the transaction has committed."""

    study_sets: dict[int, tuple[str, str]] = field(default_factory=dict)
    notices: list[dict[str, Any]] = field(default_factory=list)


class IndexWriter:
    """The one writer of the index. `start()` before use, `close()` after."""

    def __init__(self, engine: AsyncEngine, commit_batch: int = 256,
                 on_commit: Any = None, on_retry: Any = None,
                 on_lock_wait: Any = None,
                 thread_connect: Callable[[], sqlite3.Connection] | None = None) -> None:
        """`engine` is the writer's own (create_engine(..., writer=True));
        `thread_connect` (engine.thread_connector) lets association threads commit the
        common batch themselves (index/thread_commit.py)."""
        self._engine = engine
        self._lock = WriterLock.for_engine(engine)
        self._thread_connect = thread_connect
        self._thread_commit: ThreadCommit | None = None
        self._generation = 0        # the removals of other writers seen (WriterLock)
        self._batch_size = commit_batch
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False       # _STOP is queued: nothing more is taken
        # The writer keeps one connection: a pool checkout and check-in per commit
        # cost about a fifth of a single-instance commit.
        self._conn: AsyncConnection | None = None
        self._driver: Any = None     # its driver connection (aiosqlite, asyncpg)
        self._insert = BatchInsert(engine.dialect)
        self._on_commit = on_commit  # callable(batch_size) for metrics
        self._on_retry = on_retry    # callable(reason) for metrics
        self._on_lock_wait = on_lock_wait   # callable(seconds): the WriterLock's wait
        self.retries = 0
        self._stopping = False      # the writer took the close() request off the queue
        self.single_statement_batches = 0    # batches written by `_insert_known`
        self.new_series_batches = 0          # ... with new series in them
        # uid -> (pk, patient_pk, modalities, sop classes)
        self._studies: dict[str, tuple[int, int, str, str]] = {}
        # uid -> (pk, study_pk, patient_pk)
        self._series: dict[str, tuple[int, int, int]] = {}

    @property
    def thread_commit(self) -> ThreadCommit | None:
        """The association threads' commits (SQLite file with `thread_connect`)."""
        return self._thread_commit

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        if self._thread_connect is not None and self._lock is not None:
            self._thread_commit = ThreadCommit(self, self._loop, self._thread_connect)
        self._writer = asyncio.create_task(self._write_loop(), name="index-writer")

    async def close(self) -> None:
        """Finish queued writes, stop the writer; later jobs fail (IndexUnavailable)."""
        if self._writer is not None:
            self._closing = True
            await self._queue.put(_STOP)
            await self._writer
            self._writer = None
        if self._thread_commit is not None:
            await self._thread_commit.close()
            self._thread_commit = None
        await self._drop_connection()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _drop_connection(self) -> None:
        self._driver = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except DBAPIError:
                await conn.invalidate()

    # ------------------------------------------------------------------ writes
    async def add_instance(self, record: InstanceRecord, replace: bool = False) -> str | None:
        """Index an instance whose file is already in place; returns once committed.

        With `replace`, an existing row for the SOP Instance UID is swapped and the old
        file's relative path returned (the caller removes it if it differs).

        Raises:
            DuplicateInstance: the UID is indexed and `replace` is False.
            IndexUnavailable: the transaction could not be committed.
        """
        if self._writer is None or self._closing:
            raise IndexUnavailable("index writer is not running")
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(record, replace, fut))
        return await fut

    def submit(self, record: InstanceRecord, replace: bool = False
               ) -> concurrent.futures.Future[str | None]:
        """`add_instance` from another thread (an association's): thread-safe.

        The future gets what `add_instance` returns or raises, once the row is
        committed. Cancelling it (a caller's timeout) does not withdraw the row: it may
        still be committed, as with a coroutine cancelled mid-commit.

        Raises:
            IndexUnavailable: the writer is not running (or its loop is closed).
        """
        loop = self._loop
        if self._writer is None or self._closing or loop is None:
            raise IndexUnavailable("index writer is not running")
        threads = self._thread_commit     # (close() may drop it meanwhile)
        if not replace and threads is not None:
            direct = threads.offer(record)
            if direct is not None:
                return direct
        fut: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(self._enqueue, _Job(record, replace, fut))
        except RuntimeError:        # the loop is closed
            raise IndexUnavailable("server is shutting down") from None
        return fut

    def _enqueue(self, job: _Job) -> None:
        if self._writer is None or self._closing:
            _settle(job.future, exc=IndexUnavailable("index writer is not running"))
        else:
            self._queue.put_nowait(job)

    async def _write_loop(self) -> None:
        self._stopping = False
        batch: list[_Job] = []
        try:
            while not self._stopping:
                item = await self._queue.get()
                if item is _STOP:
                    break
                batch = [item]
                self._take_queued(batch)
                if self._thread_commit is None:
                    await self._commit_batch(batch)
                else:
                    await self._thread_commit.loop_enter()
                    try:
                        await self._commit_batch(batch)
                    finally:
                        self._thread_commit.loop_exit()
                batch = []
        except asyncio.CancelledError:
            await self._drop_connection()
            raise
        finally:
            # Cancelled (the loop ends without close()): no caller of `submit` is left
            # waiting for its timeout. Ambiguous for the batch under way (it may have
            # committed), as a timeout is: the archive keeps the placement intent.
            self._closing = True
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for job in batch:
                if job is not _STOP:
                    _settle(job.future, exc=IndexUnavailable("index writer stopped"))

    def _take_queued(self, batch: list[_Job]) -> None:
        """Add the requests queued meanwhile to `batch` (up to commit_batch)."""
        while (not self._stopping and len(batch) < self._batch_size
               and not self._queue.empty()):
            nxt = self._queue.get_nowait()
            if nxt is _STOP:
                self._stopping = True
                break
            batch.append(nxt)

    async def _commit_batch(self, jobs: list[_Job]) -> None:
        try:
            results, notices = await self._run_with_retry(jobs)
        except Exception as exc:
            self._forget_caches()
            if len(jobs) > 1:
                # One bad record must not fail its neighbours: retry them one by one.
                for job in jobs:
                    await self._commit_batch([job])
                return
            job = jobs[0]
            err = exc if isinstance(exc, PacsError) else IndexUnavailable(
                f"index write failed: {exc.__class__.__name__}: {exc}")
            if not isinstance(exc, PacsError):
                log.error("index.write_failed", sop_instance_uid=job.record.sop_instance_uid,
                          exc_info=exc)
            _settle(job.future, exc=err)
            return
        for notice in notices:
            log.warning(**notice)
        if self._on_commit is not None:
            self._on_commit(len(jobs))
        for job, old_path in zip(jobs, results, strict=True):
            _settle(job.future, old_path)

    async def _run_with_retry(self, jobs: list[_Job]
                              ) -> tuple[list[str | None], list[dict[str, Any]]]:
        for attempt in range(1, _MAX_RETRIES + 1):
            try:
                if self._conn is None:
                    self._conn = await self._engine.connect()
                conn = self._conn
                async with self._exclusive():
                    if attempt == 1 and self._lock is not None and self._lock.waited_s:
                        # What came while another process's writer held the file goes
                        # in this commit, not in one more wait for the lock
                        # (docs/performance.md, "Results: workers (2026-12-02)").
                        self._take_queued(jobs)
                    if attempt == 1 and await self._insert_known(conn, jobs):
                        return [None] * len(jobs), []
                    return await conn.run_sync(self.write_general, jobs)
            except IntegrityError as exc:
                self._forget_caches()
                if "sop_instance_uid" in str(exc.orig):
                    if not any(job.replace for job in jobs) or attempt == _MAX_RETRIES:
                        raise DuplicateInstance("SOP Instance is already stored") from None
                    # `replace`: another process committed the same instance since
                    # `_take_existing` looked (PostgreSQL; SQLite writers take turns):
                    # look again, and this time replace its row.
                if attempt == _MAX_RETRIES:
                    raise
                # A patient, study or series another process created since we looked,
                # or a cached key it removed: look again.
                self._count_retry("integrity", exc)
            except (OperationalError, DBAPIError) as exc:
                self._forget_caches()
                # A broken connection (server restart, network) is not reused.
                await self._drop_connection()
                if attempt == _MAX_RETRIES or not _is_retryable(exc):
                    raise
                self._count_retry("busy", exc)
                # Orthanc's back-off for serialisation failures (PostgreSQL) and locks.
                await asyncio.sleep((100 * attempt + 5 * random.randint(0, 9)) / 1000)
        raise AssertionError("unreachable")

    async def _insert_known(self, conn: AsyncConnection, jobs: list[_Job]) -> bool:
        """The common batch through the driver (index/batch_insert.py): new instances of
        cached studies whose sets hold their values already; one statement when their
        series are cached too, else one transaction that inserts the new series first.
        False when the batch needs the general path, or the driver failed (nothing
        written: the general path then looks everything up again and tells a duplicate
        from a stale key)."""
        if len(jobs) > MAX_ROWS:
            return False
        # Per job: its cached series pk, or the index of its new series in `new`.
        where: list[tuple[InstanceRecord, int, bool]] = []
        new: dict[str, tuple[int, dict[str, Any], tuple[int, int]]] = {}
        for job in jobs:
            rec = job.record
            study = self.cached_study(rec)
            if job.replace or study is None:
                return False
            series = self._series.get(rec.series_instance_uid)
            if series is not None:
                where.append((rec, series[0], False))
                continue
            if rec.series_instance_uid not in new:
                new[rec.series_instance_uid] = (len(new), series_row(rec, study[0]),
                                                (study[0], study[1]))
            where.append((rec, new[rec.series_instance_uid][0], True))
        pks: list[int] = []
        try:
            if self._driver is None:
                self._driver = (await conn.get_raw_connection()).driver_connection
            if not new:
                await self._insert.execute(self._driver,
                                           [instance_row(r, pk) for r, pk, _ in where])
            else:
                pks = await self._insert.with_new_series(
                    self._driver, [row for _, row, _ in new.values()],
                    lambda pks: [instance_row(r, pks[i] if fresh else i) for r, i, fresh in where])
        except Exception as exc:
            log.debug("index.batch_insert_failed", rows=len(where), series=len(new),
                      error=str(exc)[:200])
            self._forget_caches()
            return False
        if new:
            for uid, (i, _, (study_pk, patient_pk)) in new.items():
                self._series[uid] = (pks[i], study_pk, patient_pk)
            self.new_series_batches += 1
        else:
            self.single_statement_batches += 1
        return True

    def cached_study(self, rec: InstanceRecord) -> tuple[int, int, str, str] | None:
        """The cached study row of `rec` (pk, patient pk, modalities, SOP classes) when
        its sets hold `rec`'s values already, i.e. when `rec` changes nothing above its
        series; else None."""
        study = self._studies.get(rec.study_instance_uid)
        if (study is None or join_values(study[2], rec.series["modality"]) != study[2]
                or join_values(study[3], rec.sop_class_uid) != study[3]):
            return None
        return study

    def cached_series_pk(self, rec: InstanceRecord) -> int | None:
        """The cached series key of `rec` when the one INSERT can write it as is (its
        study cached as `cached_study` says, its series cached); else None."""
        series = self._series.get(rec.series_instance_uid)
        if series is None or self.cached_study(rec) is None:
            return None
        return series[0]

    def _count_retry(self, reason: str, exc: Exception) -> None:
        self.retries += 1
        if self._on_retry is not None:
            self._on_retry(reason)
        log.info("index.write_retry", reason=reason,
                 error=str(getattr(exc, "orig", None) or exc).splitlines()[0][:200])

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """The other processes' writers wait (SQLite); the caches are emptied when one of
        them removed rows since this writer last looked."""
        if self._lock is None:
            yield
            return
        async with self._lock:
            if self._on_lock_wait is not None:
                self._on_lock_wait(self._lock.waited_s)
            if self._lock.generation != self._generation:
                self._forget_caches()
                self._generation = self._lock.generation
            yield

    def _forget_caches(self) -> None:
        self._studies.clear()
        self._series.clear()

    def write_general(self, conn: Connection, jobs: list[_Job]
                      ) -> tuple[list[str | None], list[dict[str, Any]]]:
        """The general path: `jobs` in one transaction of lookups and inserts on `conn`;
        returns each job's replaced path and the notices to log once committed.

        Synchronous, so that its ten-odd statements cost one call each: the loop runs it
        through `AsyncConnection.run_sync`, an association thread on its own connection
        (index/thread_commit.py). Through `AsyncConnection.execute`, with the statements
        built per call, a new study cost ~13 ms of CPU; ~1.5 ms now (docs/performance.md,
        "The general path in one call, in the threads too").
        """
        with conn.begin():
            batch = _Batch()
            results: list[str | None] = []
            rows = []
            for job in jobs:
                results.append(self._take_existing(conn, batch, job) if job.replace else None)
                rows.append(self._instance_row(conn, batch, job.record))
            _INSERT_INSTANCE.insert_many(conn, rows)
            self._flush_study_sets(conn, batch)
        return results, batch.notices

    def _take_existing(self, conn: Connection, batch: _Batch, job: _Job) -> str | None:
        """For `replace`: drop the current row of this SOP instance, return its path."""
        existing = (conn.execute(
            select(Instance.pk, Instance.path, Instance.series_pk)
            .where(Instance.sop_instance_uid == job.record.sop_instance_uid))).first()
        if existing is None:
            return None
        self._remove_instance(conn, batch, existing.pk, existing.series_pk)
        return str(existing.path)

    def _instance_row(self, conn: Connection, batch: _Batch,
                      rec: InstanceRecord) -> dict[str, Any]:
        study_pk, patient_pk = self._study(conn, batch, rec)
        series_pk = self._series_pk(conn, batch, rec, study_pk, patient_pk)
        pk, ppk, mods, sops = self._studies[rec.study_instance_uid]
        new_mods = join_values(mods, rec.series["modality"])
        new_sops = join_values(sops, rec.sop_class_uid)
        if (new_mods, new_sops) != (mods, sops):
            self._studies[rec.study_instance_uid] = (pk, ppk, new_mods, new_sops)
            batch.study_sets[pk] = (new_mods, new_sops)
        return instance_row(rec, series_pk)

    def _study(self, conn: Connection, batch: _Batch,
               rec: InstanceRecord) -> tuple[int, int]:
        """(study pk, patient pk); a new study finds or creates its patient first."""
        cached = self._studies.get(rec.study_instance_uid)
        if cached is not None:
            return cached[0], cached[1]
        row = _STUDY_BY_UID.first(conn, {"uid": rec.study_instance_uid})
        if row is not None:
            pk, patient_pk, mods, sops = int(row[0]), int(row[1]), row[2], row[3]
            self._studies[rec.study_instance_uid] = (pk, patient_pk, mods, sops)
            return pk, patient_pk
        patient_pk = self._patient(conn, batch, rec)
        pk = _INSERT_STUDY.insert_pk(conn, dict(
            study_instance_uid=rec.study_instance_uid, patient_pk=patient_pk,
            modalities="", sop_classes="", num_series=0, num_instances=0,
            header=rec.header, header_syntax=rec.header_syntax,
            updated_at=datetime.now(UTC), **level_values("STUDY", rec.study)))
        self._studies[rec.study_instance_uid] = (pk, patient_pk, "", "")
        return pk, patient_pk

    def _patient(self, conn: Connection, batch: _Batch, rec: InstanceRecord) -> int:
        """The patient of a new study: found by (PatientID, issuer), else created.

        An empty PatientID identifies nobody, so such a study gets a patient of its own.
        An existing patient's demographics follow the newest study; a change is logged
        (with the two studies' UIDs, never the values) and nothing earlier is rewritten.
        """
        values = level_values("PATIENT", rec.patient)
        following = tuple(values[r.column] for r in _FOLLOWING)
        key = tuple(values[column] for column in _PATIENT_KEY)
        # Read, not found: another process may have changed the demographics since,
        # and this runs once per new study, not per instance.
        found = None
        if key[0]:
            row = _PATIENT_BY_KEY.first(conn, dict(zip(_PATIENT_KEY, key, strict=True)))
            if row is not None:
                found = (int(row[0]), tuple(row[1:]))
        if found is None:
            pk = _INSERT_PATIENT.insert_pk(conn, dict(
                num_studies=0, num_series=0, num_instances=0,
                header=rec.header, header_syntax=rec.header_syntax, **values))
        else:
            pk, before = found
            if before != following:
                self._follow(conn, batch, pk, values, before, rec)
        return pk

    def _follow(self, conn: Connection, batch: _Batch, pk: int,
                values: dict[str, Any], before: tuple[Any, ...],
                rec: InstanceRecord) -> None:
        """Update the patient row to a new study's demographics; note the change."""
        previous = (conn.execute(
            select(Study.study_instance_uid).where(Study.patient_pk == pk)
            .order_by(Study.pk.desc()).limit(1))).scalar()
        conn.execute(update(Patient).where(Patient.pk == pk).values(
            {k: v for k, v in values.items() if k not in _PATIENT_KEY}))
        changed = [r.keyword for r, old in zip(_FOLLOWING, before, strict=True)
                   if values[r.column] != old]
        batch.notices.append(dict(event="index.patient_demographics_changed", patient_pk=pk,
                                  changed=changed, previous_study_uid=previous,
                                  study_uid=rec.study_instance_uid))

    def _series_pk(self, conn: Connection, batch: _Batch, rec: InstanceRecord,
                   study_pk: int, patient_pk: int) -> int:
        cached = self._series.get(rec.series_instance_uid)
        if cached is not None:
            return cached[0]
        row = _SERIES_BY_UID.first(conn, {"uid": rec.series_instance_uid})
        pk = _INSERT_SERIES.insert_pk(conn, series_row(rec, study_pk)) if row is None \
            else int(row[0])
        self._series[rec.series_instance_uid] = (pk, study_pk, patient_pk)
        return pk

    def _flush_study_sets(self, conn: Connection, batch: _Batch) -> None:
        """Write the batch's changed ModalitiesInStudy/SOPClassesInStudy sets.

        The related-instance counts are kept by triggers (migration 0002).
        """
        if batch.study_sets:
            # Another process may have extended the sets since we cached them: merge
            # with the row as it is now, locked until our commit (FOR UPDATE; SQLite
            # holds the write lock already, after this transaction's inserts), one row
            # at a time in key order, so two writers never lock two rows crosswise.
            params = []
            for pk, (mods, sops) in sorted(batch.study_sets.items()):
                row = _STUDY_SETS_ROW.first(conn, {"pk": pk})
                if row is not None:
                    mods, sops = _union(row[0], mods), _union(row[1], sops)
                params.append({"pk": pk, "mods": mods, "sops": sops})
            _UPDATE_STUDY_SETS.execute_many(conn, params)
        batch.study_sets.clear()

    def _remove_instance(self, conn: Connection, batch: _Batch, pk: int,
                         series_pk: int) -> None:
        """Delete one instance row (triggers keep the counts); prune emptied parents."""
        self._flush_study_sets(conn, batch)
        if self._lock is not None:
            self._generation = self._lock.bump()
        conn.execute(delete(Instance).where(Instance.pk == pk))
        series = (conn.execute(select(Series.pk, Series.study_pk, Series.num_instances)
                                     .where(Series.pk == series_pk))).one()
        study = (conn.execute(select(Study.pk, Study.patient_pk).where(
            Study.pk == series.study_pk))).one()
        if series.num_instances <= 0:
            conn.execute(delete(Series).where(Series.pk == series_pk))
            self._forget_caches()
            if self._prune_empty_study(conn, study.pk, study.patient_pk):
                return
        self._recompute_study_sets(conn, study.pk)

    def _prune_empty_study(self, conn: Connection, study_pk: int,
                           patient_pk: int) -> bool:
        """Delete a study left without series (and its patient left without studies).

        An emptied study or patient must not linger: C-FIND would report it as a match
        with nothing to retrieve. Returns True when the study was deleted.
        """
        series_left = (conn.execute(select(func.count()).select_from(Series).where(
            Series.study_pk == study_pk))).scalar()
        if series_left:
            return False
        conn.execute(delete(Study).where(Study.pk == study_pk))
        studies_left = (conn.execute(select(func.count()).select_from(Study).where(
            Study.patient_pk == patient_pk))).scalar()
        if not studies_left:
            conn.execute(delete(Patient).where(Patient.pk == patient_pk))
        self._forget_caches()
        return True

    def _recompute_study_sets(self, conn: Connection, study_pk: int) -> None:
        rows = (conn.execute(
            select(Series.modality, Instance.sop_class_uid).join(
                Instance, Instance.series_pk == Series.pk).where(Series.study_pk == study_pk)
            .distinct())).all()
        mods = "\\".join(sorted({r.modality for r in rows if r.modality}))
        sops = "\\".join(sorted({r.sop_class_uid for r in rows}))
        conn.execute(update(Study).where(Study.pk == study_pk).values(
            modalities=mods, sop_classes=sops))
        self._forget_caches()


def _union(current: str, ours: str) -> str:
    for value in ours.split("\\") if ours else ():
        current = join_values(current, value)
    return current


def _is_retryable(exc: DBAPIError) -> bool:
    # A lost connection (database server restarted): the writer's long-lived connection
    # is dropped and the retry opens a new one.
    if exc.connection_invalidated:
        return True
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(word in text for word in ("could not serialize", "deadlock", "database is locked",
                                         "serialization failure"))

