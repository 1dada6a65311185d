"""The index without a server: a started IndexRepository on a tmp SQLite file, one
served by a loop in a thread of its own as in the server (`served`), and
InstanceRecords as the archive hands them to it (repository, query and archive tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, migrate, thread_connector
from pacs_server.index.models import Instance, Series
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from support.instances import CT_IMAGE


@asynccontextmanager
async def sqlite_index(db: Path) -> AsyncIterator[IndexRepository]:
    """The index file `db` (created and migrated if new) and a started repository on it,
    closed (queued writes drained) on exit. Opening it again is what a restart does."""
    engine = create_engine(DatabaseConfig(path=str(db)))
    await migrate(engine)
    repo = IndexRepository(engine)
    await repo.start()
    try:
        yield repo
    finally:
        await repo.close()
        await engine.dispose()


def index_record(*, patient: str = "P1", name: str = "Doe^John", study: str | None = None,
                 series: str | None = None, sop: str | None = None, modality: str = "CT",
                 sop_class: str = CT_IMAGE, size: int = 100,
                 study_values: dict[str, Any] | None = None,
                 series_values: dict[str, Any] | None = None,
                 instance_values: dict[str, Any] | None = None,
                 header: bytes = b"", issuer: str = "", sex: str = "") -> InstanceRecord:
    """A record with fresh UIDs unless given, stored at <patient>/<study>/<series>/<sop>.dcm.

    `*_values` override the indexed attributes of that level (e.g. study_date); `header`
    is the dataset without bulk data, in Explicit VR Little Endian (support.instances.encode).
    The study keeps its own copy of the patient attributes, as the archive records them.
    """
    study = study or generate_uid()
    series = series or generate_uid()
    sop = sop or generate_uid()
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=sop_class, study_instance_uid=study,
        series_instance_uid=series, transfer_syntax_uid=ExplicitVRLittleEndian,
        patient={"patient_id": patient, "issuer_of_patient_id": issuer, "patient_name": name,
                 "birth_date": "", "sex": sex},
        study={"patient_name": name, "patient_birth_date": "", "patient_sex": sex,
               "study_date": "20240101", "study_time": "", "accession_number": "A1",
               "study_id": "", "study_description": "", "referring_physician": "",
               **(study_values or {})},
        series={"modality": modality, "series_number": 1, "series_description": "",
                "series_date": "", "series_time": "", "body_part": "",
                **(series_values or {})},
        instance={"instance_number": 1, "content_date": "", "content_time": "",
                  **(instance_values or {})},
        header=header, header_syntax=ExplicitVRLittleEndian,
        rel_path=PurePosixPath(patient, study, series, f"{sop}.dcm"), size=size,
        source_ae="SCU")


@dataclass(frozen=True)
class Setup:
    db: DatabaseConfig
    threads: bool       # association threads commit the common batch (thread_commit.py)


class Served:
    """A started repository on a loop in another thread; `call` runs a coroutine there."""

    def __init__(self, setup: Setup) -> None:
        cfg = setup.db
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = create_engine(cfg)
        self.writer_engine = create_engine(cfg, writer=True)
        self.call(migrate(self.engine))
        self.repo = IndexRepository(
            self.engine, writer_engine=self.writer_engine,
            thread_connect=thread_connector(cfg) if setup.threads else None)
        self.call(self.repo.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def count(self, series_uid: str) -> int:
        async def count() -> int:
            async with self.engine.connect() as conn:
                return int((await conn.execute(
                    select(func.count()).select_from(Instance).join(Series).where(
                        Series.series_instance_uid == series_uid))).scalar_one())
        return int(self.call(count()))

    def close(self) -> None:
        self.call(self.repo.close())
        self.call(self.writer_engine.dispose())
        self.call(self.engine.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def served(cfg: Setup) -> Iterator[Served]:
    s = Served(cfg)
    try:
        yield s
    finally:
        s.close()
