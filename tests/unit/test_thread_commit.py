"""The common batch committed by the association threads themselves
(index/thread_commit.py), on a real SQLite file: what it writes, what it leaves to the
loop's writer, and how it gives way to that writer and to another process's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance
from pacs_server.index.engine import WriterLock
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.thread_commit import ThreadCommit
from support.index import Served, Setup, index_record


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Served]:
    served = Served(Setup(DatabaseConfig(path=str(tmp_path / "index.db")), threads=True))
    try:
        yield served
    finally:
        served.close()


def commits(s: Served) -> ThreadCommit:
    tc = s.repo.writer.thread_commit
    assert tc is not None
    return tc


def other_process_lock(tmp_path: Path) -> WriterLock:
    """The writer lock as another process's writer holds it (its own descriptor)."""
    return WriterLock(Path(f"{tmp_path / 'index.db'}.writer-lock"))


@contextmanager
def leader_held_up(s: Served, tmp_path: Path, study: str, series: str) -> Iterator[None]:
    """A thread writing a known row as leader, held up on the writer lock (another
    process's) until the block ends; then it is done."""
    lock = other_process_lock(tmp_path)
    lock.acquire()
    rec = index_record(study=study, series=series)
    leader = threading.Thread(target=lambda: s.repo.submit_instance(rec).result(30))
    try:
        leader.start()                     # writes at once: waits for the lock
        time.sleep(0.2)
        yield
    finally:
        lock.release()
        lock.close()
        leader.join(30)


def known_series(s: Served) -> tuple[str, str]:
    """A study and series with one row, which the writer now has cached."""
    study, series = generate_uid(), generate_uid()
    assert s.repo.submit_instance(index_record(study=study, series=series)).result(30) is None
    return study, series


def series_of(s: Served, sop: str) -> str:
    async def q() -> str:
        async with s.engine.connect() as conn:
            return str((await conn.execute(select(Series.series_instance_uid).join(
                Instance).where(Instance.sop_instance_uid == sop))).scalar_one())
    return str(s.call(q()))


def test_every_new_row_is_written_by_the_threads_known_series_as_one_insert(
        s: Served) -> None:
    study, series = generate_uid(), generate_uid()
    assert s.repo.submit_instance(index_record(study=study, series=series)).result(30) is None
    tc = commits(s)
    assert (tc.batches, tc.general_batches) == (0, 1)   # a new patient, study and series
    records = [index_record(study=study, series=series) for _ in range(30)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda r: s.repo.submit_instance(r).result(30), records)) \
            == [None] * 30
    assert s.count(series) == 31
    assert 1 <= tc.batches <= 30 and tc.general_batches == 1 and tc.handed == 0
    # A new series of the known study, and a modality new to it: the general path.
    before = tc.batches
    other = generate_uid()
    assert s.repo.submit_instance(index_record(study=study, series=other)).result(30) is None
    sr = index_record(study=study, series=series, modality="SR")
    assert s.repo.submit_instance(sr).result(30) is None
    assert (tc.batches, tc.general_batches, tc.handed) == (before, 3, 0)
    assert s.count(other) == 1 and s.count(series) == 32
    assert s.call(s.repo.counts())["studies"] == 1
    # ...after which the new series is known: one INSERT.
    assert s.repo.submit_instance(index_record(study=study, series=other)).result(30) is None
    assert tc.batches == before + 1

    async def modalities() -> str:
        async with s.engine.connect() as conn:
            return str((await conn.execute(select(Study.modalities))).scalar_one())
    assert s.call(modalities()) == "CT\\SR"


def test_a_duplicate_is_answered_as_one_and_the_next_rows_still_go_through(
        s: Served) -> None:
    study, series = generate_uid(), generate_uid()
    first = index_record(study=study, series=series)
    s.repo.submit_instance(first).result(30)
    s.repo.submit_instance(index_record(study=study, series=series)).result(30)
    tc = commits(s)
    written = tc.batches
    again = index_record(sop=first.sop_instance_uid, study=study, series=series)
    with pytest.raises(DuplicateInstance):
        s.repo.submit_instance(again).result(30)
    assert tc.handed == 1 and tc.batches == written     # the INSERT failed: nothing here
    assert s.count(series) == 2
    for _ in range(3):
        s.repo.submit_instance(index_record(study=study, series=series)).result(30)
    assert s.count(series) == 5
    assert tc.batches >= written + 1                   # caches made again, then here


def test_rows_queued_behind_another_process_are_one_commit_and_a_late_caller_withdraws(
        s: Served, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    s.repo.submit_instance(index_record(study=study, series=series)).result(30)
    s.repo.submit_instance(index_record(study=study, series=series)).result(30)
    tc = commits(s)
    written = tc.batches
    with leader_held_up(s, tmp_path, study, series):
        queued = [index_record(study=study, series=series) for _ in range(3)]
        futures = [s.repo.submit_instance(r) for r in queued]
        late = index_record(study=study, series=series)
        late_future = s.repo.submit_instance(late)
        with pytest.raises(concurrent.futures.TimeoutError):
            late_future.result(0.2)        # its caller gives up: never written
        waiters = concurrent.futures.ThreadPoolExecutor(3)
        answers = [waiters.submit(f.result, 30) for f in futures]
        time.sleep(0.2)
    assert [a.result(30) for a in answers] == [None] * 3
    waiters.shutdown()
    assert s.count(series) == 2 + 1 + 3
    assert tc.batches == written + 2       # the leader's row, then the three together
    assert s.call(s.repo.instance_path(late.sop_instance_uid)) is None


def test_the_loops_batch_waits_for_a_thread_batch_and_takes_what_queued_meanwhile(
        s: Served, tmp_path: Path) -> None:
    study, series = known_series(s)
    tc = commits(s)
    with leader_held_up(s, tmp_path, study, series):
        new_series = index_record(study=study)       # the loop's path: waits for it
        loop_future = s.repo.submit_instance(new_series)
        time.sleep(0.2)
        assert not loop_future.done()
        queued = index_record(study=study, series=series)
        queued_future = s.repo.submit_instance(queued)
    assert loop_future.result(30) is None
    assert queued_future.result(30) is None
    assert s.count(series) == 3
    assert series_of(s, new_series.sop_instance_uid) == new_series.series_instance_uid
    assert tc.handed <= 1                  # `queued`, if the loop's batch was under way


def test_keys_another_process_removed_send_the_batch_to_the_loops_writer(
        s: Served, tmp_path: Path) -> None:
    """SQLite reuses the rowid of a deleted last row: a cached series key may name
    another series once another writer removed rows (WriterLock's generation)."""
    study, series = known_series(s)
    tc = commits(s)
    lock = other_process_lock(tmp_path)
    lock.acquire()
    lock.bump()                            # as the other writer's removal does
    lock.release()
    lock.close()
    rec = index_record(study=study, series=series)
    assert s.repo.submit_instance(rec).result(30) is None
    assert tc.batches == 0 and tc.handed == 1
    assert series_of(s, rec.sop_instance_uid) == series
    # The loop's writer caught up with the generation: the threads write again.
    s.repo.submit_instance(index_record(study=study, series=series)).result(30)
    assert tc.batches == 1


def test_the_loops_writer_enters_only_once_the_thread_batch_under_way_ended(
        s: Served, tmp_path: Path) -> None:
    study, series = known_series(s)
    tc = commits(s)
    with leader_held_up(s, tmp_path, study, series):
        entered = asyncio.run_coroutine_threadsafe(tc.loop_enter(), s.loop)
        time.sleep(0.2)
        assert not entered.done()          # the thread batch holds the index
        queued = index_record(study=study, series=series)
    entered.result(30)
    assert tc.batches == 1
    # While the loop's writer is in, a known row is its to write.
    future = s.repo.submit_instance(queued)
    s.loop.call_soon_threadsafe(tc.loop_exit)
    assert future.result(30) is None
    assert tc.batches == 1
    assert s.count(series) == 3


def test_a_row_nobody_waits_for_is_written_by_the_leader_before_it_returns(
        s: Served, tmp_path: Path) -> None:
    study, series = known_series(s)
    tc = commits(s)
    with leader_held_up(s, tmp_path, study, series):
        unasked = s.repo.submit_instance(index_record(study=study, series=series))
    assert unasked.done() and unasked.result(0) is None
    assert tc.batches == 2 and tc.handed == 0
    assert s.count(series) == 3


def test_a_new_study_whose_instance_is_a_duplicate_leaves_nothing_behind(
        s: Served) -> None:
    first = index_record(patient="P1")
    s.repo.submit_instance(first).result(30)
    tc = commits(s)
    again = index_record(patient="P2", sop=first.sop_instance_uid)   # another study
    with pytest.raises(DuplicateInstance):
        s.repo.submit_instance(again).result(30)
    assert tc.handed == 1                  # rolled back here, answered by the loop's writer
    counts = s.call(s.repo.counts())
    assert (counts["patients"], counts["studies"], counts["instances"]) == (1, 1, 1)
    # The caches were dropped with the rollback: the next new study is whole.
    nxt = index_record(patient="P2")
    s.repo.submit_instance(nxt).result(30)
    assert series_of(s, nxt.sop_instance_uid) == nxt.series_instance_uid
    assert s.call(s.repo.counts())["studies"] == 2


def test_a_patients_new_demographics_follow_the_newest_study_written_here(
        s: Served) -> None:
    s.repo.submit_instance(index_record(patient="P1", name="Doe^John")).result(30)
    s.repo.submit_instance(index_record(patient="P1", name="Doe^Jon")).result(30)
    tc = commits(s)
    assert tc.general_batches == 2 and tc.handed == 0

    async def names() -> list[str]:
        async with s.engine.connect() as conn:
            return [str(n) for n in (await conn.execute(select(Patient.patient_name)))
                    .scalars()]
    assert s.call(names()) == ["Doe^Jon"]
