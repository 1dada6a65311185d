"""IndexWriter.submit: rows handed to the writer from other threads (association
threads), on a real SQLite file and a real PostgreSQL database. The loop runs in a
thread of its own, as in the server; the tests play the association threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance, IndexUnavailable
from pacs_server.index.engine import WriterLock, create_engine, migrate
from pacs_server.index.repository import IndexRepository
from support.index import Served, Setup, index_record, served


@pytest.fixture(params=["sqlite", "sqlite-threads", "postgresql"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    """`sqlite-threads` is the server's SQLite writer; `sqlite` the loop's path alone."""
    if request.param == "postgresql":
        return Setup(DatabaseConfig(url=request.getfixturevalue("postgres_url")), False)
    return Setup(DatabaseConfig(path=str(tmp_path / "index.db")),
                 request.param == "sqlite-threads")


def test_rows_submitted_from_many_threads_are_committed_when_answered(
        cfg: Setup) -> None:
    study, series = generate_uid(), generate_uid()
    with served(cfg) as s:
        s.call(s.repo.add_instance(index_record(study=study, series=series)))
        records = [index_record(study=study, series=series) for _ in range(40)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda r: s.repo.submit_instance(r).result(30), records))
        assert answers == [None] * 40
        # Answered means committed: every row is there.
        assert s.count(series) == 41
        for r in records[:3]:
            assert s.call(s.repo.instance_path(r.sop_instance_uid)) == str(r.rel_path)


def test_a_duplicate_and_a_replacement_are_answered_through_the_future(
        cfg: Setup) -> None:
    with served(cfg) as s:
        first = index_record()
        assert s.repo.submit_instance(first).result(30) is None
        again = index_record(sop=first.sop_instance_uid, study=first.study_instance_uid,
                             series=first.series_instance_uid)
        with pytest.raises(DuplicateInstance):
            s.repo.submit_instance(again).result(30)
        moved = index_record(patient="P2", sop=first.sop_instance_uid)
        assert s.repo.submit_instance(moved, replace=True).result(30) == str(first.rel_path)
        assert s.call(s.repo.instance_path(first.sop_instance_uid)) == str(moved.rel_path)


def test_after_close_a_submission_is_refused_at_once(cfg: Setup) -> None:
    s = Served(cfg)
    s.call(s.repo.close())
    try:
        with pytest.raises(IndexUnavailable):
            s.repo.submit_instance(index_record())
    finally:
        s.close()


def test_a_writer_stopped_mid_batch_answers_its_callers_at_once(tmp_path: Path) -> None:
    """The loop ends without close() (asyncio.run cancels its tasks): a caller of
    submit gets IndexUnavailable then, not at its own timeout."""
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    started, finish = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        engine = create_engine(cfg)
        await migrate(engine)
        box["repo"] = repo = IndexRepository(engine, writer_engine=create_engine(
            cfg, writer=True))
        await repo.start()
        started.set()
        await asyncio.to_thread(finish.wait)      # returns without closing the writer

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    other = WriterLock(Path(f"{tmp_path / 'index.db'}.writer-lock"))   # another process
    runner.start()
    assert started.wait(30)
    asyncio.run(other.__aenter__())
    try:
        fut = box["repo"].submit_instance(index_record())
        with pytest.raises(concurrent.futures.TimeoutError):
            fut.result(0.3)                       # waiting for the other writer
        finish.set()
        with pytest.raises(IndexUnavailable, match="stopped"):
            fut.result(10)
    finally:
        asyncio.run(other.__aexit__(None, None, None))
        other.close()
        runner.join(30)
