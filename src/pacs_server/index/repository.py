"""IndexRepository: all SQL of the archive index, its transactions and group commit.

Writes go through one writer task. While a transaction commits, new requests queue up
and the next transaction takes all of them (up to `commit_batch`), so N concurrent
C-STOREs cost one commit, yet each caller resumes only once its own row is committed.
Only the writer modifies the index, so it may cache the primary keys it has seen.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pacs_server.errors import DuplicateInstance, IndexUnavailable, PacsError
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.records import InstanceRecord
from pacs_server.index.text import join_values, name_key

log = structlog.get_logger(__name__)

_STOP = object()
_MAX_RETRIES = 5

# Statements of the write path, built once: compiling expressions per instance costs
# more than executing them.
_INSERT_INSTANCE = insert(Instance)
_UPDATE_STUDY_SETS = text(
    "UPDATE studies SET modalities = :mods, sop_classes = :sops WHERE pk = :pk")


@dataclass
class _Job:
    record: InstanceRecord
    replace: bool
    future: asyncio.Future[str | None]


@dataclass
class StoredRef:
    """Where an archived instance lives."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int


@dataclass
class _Batch:
    """Per-transaction bookkeeping: study attribute sets written once at the end."""

    study_sets: dict[int, tuple[str, str]] = field(default_factory=dict)


class IndexRepository:
    """The archive index. Create one per process; `start()` before use, `close()` after."""

    def __init__(self, engine: AsyncEngine, commit_batch: int = 256,
                 on_commit: Any = None, writer_engine: AsyncEngine | None = None) -> None:
        """`writer_engine` (create_engine(..., writer=True)) serves the write path;
        `engine` the reads."""
        self._engine = engine
        self._writer_engine = writer_engine or engine
        self._batch_size = commit_batch
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # The writer keeps one connection: a pool checkout and check-in per commit
        # cost about a fifth of a single-instance commit.
        self._conn: AsyncConnection | None = None
        self._on_commit = on_commit  # callable(batch_size) for metrics
        self._patients: dict[str, int] = {}
        # uid -> (pk, patient_pk, modalities, sop classes)
        self._studies: dict[str, tuple[int, int, str, str]] = {}
        # uid -> (pk, study_pk, patient_pk)
        self._series: dict[str, tuple[int, int, int]] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="index-writer")

    async def close(self) -> None:
        """Finish queued writes, stop the writer."""
        if self._writer is not None:
            await self._queue.put(_STOP)
            await self._writer
            self._writer = None
        await self._drop_connection()

    async def _drop_connection(self) -> None:
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
        if self._writer is None:
            raise IndexUnavailable("index writer is not running")
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(record, replace, fut))
        return await fut

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is _STOP:
                break
            batch: list[_Job] = [item]
            while len(batch) < self._batch_size and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            await self._commit_batch(batch)

    async def _commit_batch(self, jobs: list[_Job]) -> None:
        try:
            results = await self._run_with_retry(jobs)
        except Exception as exc:
            self._forget_caches()
            if len(jobs) > 1:
                # One bad record must not fail its neighbours: retry them one by one.
                for job in jobs:
                    await self._commit_batch([job])
                return
            job = jobs[0]
            if not job.future.done():
                err = exc if isinstance(exc, PacsError) else IndexUnavailable(
                    f"index write failed: {exc.__class__.__name__}: {exc}")
                if not isinstance(exc, PacsError):
                    log.error("index.write_failed", sop_instance_uid=job.record.sop_instance_uid,
                              exc_info=exc)
                job.future.set_exception(err)
            return
        if self._on_commit is not None:
            self._on_commit(len(jobs))
        for job, old_path in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(old_path)

    async def _run_with_retry(self, jobs: list[_Job]) -> list[str | None]:
        for attempt in range(1, _MAX_RETRIES + 1):
            try:
                if self._conn is None:
                    self._conn = await self._writer_engine.connect()
                conn = self._conn
                async with conn.begin():
                    batch = _Batch()
                    results: list[str | None] = []
                    rows = []
                    for job in jobs:
                        results.append(await self._take_existing(conn, batch, job)
                                       if job.replace else None)
                        rows.append(await self._instance_row(conn, batch, job.record))
                    await conn.execute(_INSERT_INSTANCE, rows)
                    await self._flush_study_sets(conn, batch)
                return results
            except IntegrityError as exc:
                self._forget_caches()
                if "sop_instance_uid" in str(exc.orig):
                    raise DuplicateInstance("SOP Instance is already stored") from None
                raise
            except (OperationalError, DBAPIError) as exc:
                self._forget_caches()
                # A broken connection (server restart, network) is not reused.
                await self._drop_connection()
                if attempt == _MAX_RETRIES or not _is_retryable(exc):
                    raise
                # Orthanc's back-off for serialisation failures (PostgreSQL) and locks.
                await asyncio.sleep((100 * attempt + 5 * random.randint(0, 9)) / 1000)
        raise AssertionError("unreachable")

    def _forget_caches(self) -> None:
        self._patients.clear()
        self._studies.clear()
        self._series.clear()

    async def _take_existing(self, conn: AsyncConnection, batch: _Batch, job: _Job) -> str | None:
        """For `replace`: drop the current row of this SOP instance, return its path."""
        existing = (await conn.execute(
            select(Instance.pk, Instance.path, Instance.series_pk)
            .where(Instance.sop_instance_uid == job.record.sop_instance_uid))).first()
        if existing is None:
            return None
        await self._remove_instance(conn, batch, existing.pk, existing.series_pk)
        return str(existing.path)

    async def _instance_row(self, conn: AsyncConnection, batch: _Batch,
                            rec: InstanceRecord) -> dict[str, Any]:
        patient_pk = await self._patient(conn, batch, rec)
        study_pk = await self._study(conn, batch, rec, patient_pk)
        series_pk = await self._series_pk(conn, batch, rec, study_pk, patient_pk)
        pk, ppk, mods, sops = self._studies[rec.study_instance_uid]
        new_mods = join_values(mods, rec.series["modality"])
        new_sops = join_values(sops, rec.sop_class_uid)
        if (new_mods, new_sops) != (mods, sops):
            self._studies[rec.study_instance_uid] = (pk, ppk, new_mods, new_sops)
            batch.study_sets[pk] = (new_mods, new_sops)
        return dict(
            sop_instance_uid=rec.sop_instance_uid,
            series_pk=series_pk,
            sop_class_uid=rec.sop_class_uid,
            instance_number=rec.instance["instance_number"],
            content_date=rec.instance["content_date"],
            content_time=rec.instance["content_time"],
            transfer_syntax_uid=rec.transfer_syntax_uid,
            path=str(rec.rel_path),
            size=rec.size,
            source_ae=rec.source_ae,
            received_at=rec.received_at,
            header=rec.header,
            header_syntax=rec.header_syntax,
        )

    async def _patient(self, conn: AsyncConnection, batch: _Batch, rec: InstanceRecord) -> int:
        p = rec.patient
        values = dict(patient_name=p["patient_name"], patient_name_norm=name_key(p["patient_name"]),
                      birth_date=p["birth_date"], sex=p["sex"])
        pk = self._patients.get(p["patient_id"])
        if pk is None:
            pk = (await conn.execute(select(Patient.pk).where(
                Patient.patient_id == p["patient_id"]))).scalar()
        if pk is None:
            result = await conn.execute(Patient.__table__.insert().values(
                patient_id=p["patient_id"], num_studies=0, num_series=0, num_instances=0,
                header=rec.header, header_syntax=rec.header_syntax, **values))
            pk = int(result.inserted_primary_key[0])
        elif rec.study_instance_uid not in self._studies:
            # Demographics follow the newest study sent for this patient.
            await conn.execute(update(Patient).where(Patient.pk == pk).values(**values))
        self._patients[p["patient_id"]] = pk
        return pk

    async def _study(self, conn: AsyncConnection, batch: _Batch, rec: InstanceRecord,
                     patient_pk: int) -> int:
        cached = self._studies.get(rec.study_instance_uid)
        if cached is not None:
            return cached[0]
        row = (await conn.execute(select(Study.pk, Study.patient_pk, Study.modalities,
                                         Study.sop_classes).where(
            Study.study_instance_uid == rec.study_instance_uid))).first()
        if row is None:
            s = rec.study
            result = await conn.execute(Study.__table__.insert().values(
                study_instance_uid=rec.study_instance_uid, patient_pk=patient_pk,
                referring_physician_norm=name_key(s["referring_physician"]),
                modalities="", sop_classes="", num_series=0, num_instances=0,
                header=rec.header, header_syntax=rec.header_syntax,
                updated_at=datetime.now(UTC), **s))
            pk = int(result.inserted_primary_key[0])
            self._studies[rec.study_instance_uid] = (pk, patient_pk, "", "")
            return pk
        self._studies[rec.study_instance_uid] = (row.pk, row.patient_pk, row.modalities,
                                                 row.sop_classes)
        return int(row.pk)

    async def _series_pk(self, conn: AsyncConnection, batch: _Batch, rec: InstanceRecord,
                         study_pk: int, patient_pk: int) -> int:
        cached = self._series.get(rec.series_instance_uid)
        if cached is not None:
            return cached[0]
        row = (await conn.execute(select(Series.pk, Series.study_pk).where(
            Series.series_instance_uid == rec.series_instance_uid))).first()
        if row is None:
            result = await conn.execute(Series.__table__.insert().values(
                series_instance_uid=rec.series_instance_uid, study_pk=study_pk,
                num_instances=0, header=rec.header, header_syntax=rec.header_syntax,
                **rec.series))
            pk = int(result.inserted_primary_key[0])
        else:
            pk = int(row.pk)
        self._series[rec.series_instance_uid] = (pk, study_pk, patient_pk)
        return pk

    async def _flush_study_sets(self, conn: AsyncConnection, batch: _Batch) -> None:
        """Write the batch's changed ModalitiesInStudy/SOPClassesInStudy sets.

        The related-instance counts are kept by triggers (migration 0002).
        """
        if batch.study_sets:
            await conn.execute(_UPDATE_STUDY_SETS, [
                {"pk": pk, "mods": mods, "sops": sops}
                for pk, (mods, sops) in batch.study_sets.items()])
        batch.study_sets.clear()

    async def _remove_instance(self, conn: AsyncConnection, batch: _Batch, pk: int,
                               series_pk: int) -> None:
        """Delete one instance row (triggers keep the counts); prune emptied parents."""
        await self._flush_study_sets(conn, batch)
        await conn.execute(delete(Instance).where(Instance.pk == pk))
        series = (await conn.execute(select(Series.pk, Series.study_pk, Series.num_instances)
                                     .where(Series.pk == series_pk))).one()
        study = (await conn.execute(select(Study.pk, Study.patient_pk).where(
            Study.pk == series.study_pk))).one()
        if series.num_instances <= 0:
            await conn.execute(delete(Series).where(Series.pk == series_pk))
            self._forget_caches()
            if await self._prune_empty_study(conn, study.pk, study.patient_pk):
                return
        await self._recompute_study_sets(conn, study.pk)

    async def _prune_empty_study(self, conn: AsyncConnection, study_pk: int,
                                 patient_pk: int) -> bool:
        """Delete a study left without series (and its patient left without studies).

        An emptied study or patient must not linger: C-FIND would report it as a match
        with nothing to retrieve. Returns True when the study was deleted.
        """
        series_left = (await conn.execute(select(func.count()).select_from(Series).where(
            Series.study_pk == study_pk))).scalar()
        if series_left:
            return False
        await conn.execute(delete(Study).where(Study.pk == study_pk))
        studies_left = (await conn.execute(select(func.count()).select_from(Study).where(
            Study.patient_pk == patient_pk))).scalar()
        if not studies_left:
            await conn.execute(delete(Patient).where(Patient.pk == patient_pk))
        self._forget_caches()
        return True

    async def _recompute_study_sets(self, conn: AsyncConnection, study_pk: int) -> None:
        rows = (await conn.execute(
            select(Series.modality, Instance.sop_class_uid).join(
                Instance, Instance.series_pk == Series.pk).where(Series.study_pk == study_pk)
            .distinct())).all()
        mods = "\\".join(sorted({r.modality for r in rows if r.modality}))
        sops = "\\".join(sorted({r.sop_class_uid for r in rows}))
        await conn.execute(update(Study).where(Study.pk == study_pk).values(
            modalities=mods, sop_classes=sops))
        self._forget_caches()

    # ------------------------------------------------------------------ reads
    async def instance_path(self, sop_instance_uid: str) -> str | None:
        """Relative path of an indexed instance, or None."""
        async with self._engine.connect() as conn:
            return (await conn.execute(select(Instance.path).where(
                Instance.sop_instance_uid == sop_instance_uid))).scalar()

    async def counts(self) -> dict[str, int]:
        """Rows per level, for start-up logs and store_scp's summary."""
        async with self._engine.connect() as conn:
            out = {}
            for name, model in (("patients", Patient), ("studies", Study),
                                ("series", Series), ("instances", Instance)):
                out[name] = int((await conn.execute(
                    select(func.count()).select_from(model))).scalar() or 0)
            out["bytes"] = int((await conn.execute(
                select(func.coalesce(func.sum(Instance.size), 0)))).scalar() or 0)
            return out

    async def refs(self, sop_instance_uids: Iterable[str]) -> list[StoredRef]:
        """Stored locations for the given instances (missing UIDs are left out)."""
        uids = list(sop_instance_uids)
        out: list[StoredRef] = []
        async with self._engine.connect() as conn:
            for i in range(0, len(uids), 500):
                rows = await conn.execute(select(
                    Instance.sop_instance_uid, Instance.sop_class_uid,
                    Instance.transfer_syntax_uid, Instance.path, Instance.size).where(
                    Instance.sop_instance_uid.in_(uids[i:i + 500])))
                out.extend(StoredRef(*r) for r in rows)
        return out


def _is_retryable(exc: DBAPIError) -> bool:
    # A lost connection (database server restarted): the writer's long-lived connection
    # is dropped and the retry opens a new one.
    if exc.connection_invalidated:
        return True
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(word in text for word in ("could not serialize", "deadlock", "database is locked",
                                         "serialization failure"))
