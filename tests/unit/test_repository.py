"""index/repository.py on a real SQLite file and a real PostgreSQL database: counts, group
commit, duplicates, replace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import structlog
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from pacs_server.config import DatabaseConfig
from pacs_server.errors import DuplicateInstance, IndexUnavailable, StartupError
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.models import Instance, Patient, Series, Study
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from support.index import index_record


def record(**kwargs: Any) -> InstanceRecord:
    return index_record(**kwargs)


class Commits:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, n: int) -> None:
        self.batches.append(n)


@pytest.fixture(params=["sqlite", "postgresql"])
async def repo_env(request: pytest.FixtureRequest,
                   tmp_path: Path) -> AsyncIterator[tuple[IndexRepository, Commits, Any]]:
    """The repository as the server runs it, on SQLite and on PostgreSQL."""
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    engine = create_engine(cfg)
    await migrate(engine)
    writer = create_engine(cfg, writer=True)   # as the server runs it
    commits = Commits()
    repo = IndexRepository(engine, commit_batch=256, on_commit=commits, writer_engine=writer)
    await repo.start()
    yield repo, commits, engine
    await repo.close()
    await writer.dispose()
    await engine.dispose()


async def rows(engine: Any, model: Any, *cols: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(*cols) if cols else select(model))).all())


async def test_counts_of_an_empty_index(repo_env: Any) -> None:
    repo, _, _ = repo_env
    assert await repo.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0,
                                   "bytes": 0}


async def test_hierarchy_counts(repo_env: Any) -> None:
    repo, _, engine = repo_env
    study_a, study_b = generate_uid(), generate_uid()
    series_a1, series_a2 = generate_uid(), generate_uid()
    recs = [
        index_record(patient="P1", study=study_a, series=series_a1, size=10),
        index_record(patient="P1", study=study_a, series=series_a1, size=20),
        index_record(patient="P1", study=study_a, series=series_a2, modality="SR",
                     sop_class="1.2.840.10008.5.1.4.1.1.88.33", size=30),
        index_record(patient="P1", study=study_b, size=40),
        index_record(patient="P2", size=50),
    ]
    for rec in recs:
        assert await repo.add_instance(rec) is None
    assert await repo.counts() == {"patients": 2, "studies": 3, "series": 4, "instances": 5,
                                   "bytes": 150}
    p1 = (await rows(engine, Patient, Patient.num_studies, Patient.num_series,
                     Patient.num_instances, Patient.patient_id))
    assert {r.patient_id: tuple(r)[:3] for r in p1} == {"P1": (2, 3, 4), "P2": (1, 1, 1)}
    studies = {r.study_instance_uid: r for r in await rows(
        engine, Study, Study.study_instance_uid, Study.num_series, Study.num_instances,
        Study.modalities, Study.sop_classes)}
    assert (studies[study_a].num_series, studies[study_a].num_instances) == (2, 3)
    assert studies[study_a].modalities == "CT\\SR"
    assert studies[study_a].sop_classes == ("1.2.840.10008.5.1.4.1.1.2\\"
                                            "1.2.840.10008.5.1.4.1.1.88.33")
    series = {r.series_instance_uid: r.num_instances for r in await rows(
        engine, Series, Series.series_instance_uid, Series.num_instances)}
    assert series[series_a1] == 2 and series[series_a2] == 1


async def test_lookups(repo_env: Any) -> None:
    repo, _, _ = repo_env
    rec = index_record(size=123)
    await repo.add_instance(rec)
    assert await repo.instance_path(rec.sop_instance_uid) == str(rec.rel_path)
    assert await repo.instance_path("1.2.3.999") is None
    (ref,) = await repo.refs([rec.sop_instance_uid, "1.2.3.999"])
    assert ref.sop_instance_uid == rec.sop_instance_uid
    assert ref.transfer_syntax_uid == ExplicitVRLittleEndian
    assert ref.path == str(rec.rel_path) and ref.size == 123


async def test_duplicate_is_refused_and_changes_nothing(repo_env: Any) -> None:
    repo, _, _ = repo_env
    rec = index_record()
    await repo.add_instance(rec)
    before = await repo.counts()
    again = index_record(sop=rec.sop_instance_uid, patient="OTHER")
    with pytest.raises(DuplicateInstance, match="already stored"):
        await repo.add_instance(again)
    assert await repo.counts() == before
    assert await repo.instance_path(rec.sop_instance_uid) == str(rec.rel_path)


async def test_replace_returns_the_old_path_and_keeps_counts(repo_env: Any) -> None:
    repo, _, engine = repo_env
    study, series = generate_uid(), generate_uid()
    first = index_record(patient="P1", study=study, series=series, size=10)
    sibling = index_record(patient="P1", study=study, series=series, size=5)
    await repo.add_instance(first)
    await repo.add_instance(sibling)
    newer = index_record(patient="P1", study=study, series=series, sop=first.sop_instance_uid,
                         size=99)
    newer.rel_path = PurePosixPath("elsewhere", f"{first.sop_instance_uid}.dcm")
    assert await repo.add_instance(newer, replace=True) == str(first.rel_path)
    assert await repo.instance_path(first.sop_instance_uid) == str(newer.rel_path)
    assert await repo.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 2,
                                   "bytes": 104}
    (s,) = await rows(engine, Series, Series.num_instances)
    assert s.num_instances == 2
    (st,) = await rows(engine, Study, Study.num_instances, Study.num_series)
    assert (st.num_instances, st.num_series) == (2, 1)


async def test_replace_into_another_series_moves_the_instance(repo_env: Any) -> None:
    repo, _, engine = repo_env
    study = generate_uid()
    old = index_record(study=study, modality="CT")
    await repo.add_instance(old)
    moved = index_record(study=study, sop=old.sop_instance_uid, modality="MR",
                         sop_class="1.2.840.10008.5.1.4.1.1.4")
    await repo.add_instance(moved, replace=True)
    counts = await repo.counts()
    assert (counts["series"], counts["instances"]) == (1, 1)
    (st,) = await rows(engine, Study, Study.num_series, Study.num_instances, Study.modalities,
                       Study.sop_classes)
    assert (st.num_series, st.num_instances) == (1, 1)
    assert st.modalities == "MR"
    assert st.sop_classes == "1.2.840.10008.5.1.4.1.1.4"


async def test_replace_of_an_unknown_uid_is_a_plain_add(repo_env: Any) -> None:
    repo, _, _ = repo_env
    rec = index_record()
    assert await repo.add_instance(rec, replace=True) is None
    assert (await repo.counts())["instances"] == 1


async def test_concurrent_adds_are_group_committed(repo_env: Any) -> None:
    repo, commits, _ = repo_env
    study = generate_uid()
    recs = [index_record(patient=f"P{i % 3}", study=study if i % 2 else None) for i in range(60)]
    results = await asyncio.gather(*(repo.add_instance(r) for r in recs))
    assert results == [None] * 60
    assert sum(commits.batches) == 60
    assert len(commits.batches) < 60, "every add got its own transaction"
    assert max(commits.batches) > 1
    assert (await repo.counts())["instances"] == 60
    for rec in recs:
        assert await repo.instance_path(rec.sop_instance_uid) == str(rec.rel_path)


async def test_one_bad_record_does_not_fail_its_batch(repo_env: Any) -> None:
    repo, _, _ = repo_env
    existing = index_record()
    await repo.add_instance(existing)
    recs = [index_record() for _ in range(9)]
    recs.insert(4, index_record(sop=existing.sop_instance_uid))
    results = await asyncio.gather(*(repo.add_instance(r) for r in recs),
                                   return_exceptions=True)
    assert isinstance(results[4], DuplicateInstance)
    assert [r for i, r in enumerate(results) if i != 4] == [None] * 9
    assert (await repo.counts())["instances"] == 10


async def test_same_uid_twice_in_one_batch(repo_env: Any) -> None:
    repo, _, _ = repo_env
    sop = generate_uid()
    results = await asyncio.gather(repo.add_instance(index_record(sop=sop)),
                                   repo.add_instance(index_record(sop=sop)),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["DuplicateInstance", "NoneType"]
    assert (await repo.counts())["instances"] == 1


async def test_close_drains_queued_writes_then_refuses(tmp_path: Path) -> None:
    engine = create_engine(DatabaseConfig(path=str(tmp_path / "index.db")))
    await migrate(engine)
    repo = IndexRepository(engine)
    await repo.start()
    pending = [asyncio.ensure_future(repo.add_instance(index_record())) for _ in range(5)]
    await asyncio.sleep(0)  # let them enqueue
    await repo.close()
    assert [await p for p in pending] == [None] * 5
    with pytest.raises(IndexUnavailable):
        await repo.add_instance(index_record())
    # A second repository on the same file sees the committed rows.
    repo2 = IndexRepository(engine)
    assert (await repo2.counts())["instances"] == 5
    await engine.dispose()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_engine(DatabaseConfig(path=str(tmp_path / "sub" / "index.db")))
    await migrate(engine)
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
    await engine.dispose()
    assert (tmp_path / "sub" / "index.db").is_file()


async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    for _ in range(2):
        engine = create_engine(cfg)
        await migrate(engine)
        await engine.dispose()
    engine = create_engine(cfg)
    async with engine.connect() as conn:
        tables = {r[0] for r in (await conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type='table'")).all()}
    await engine.dispose()
    assert {"patients", "studies", "series", "instances"} <= tables


async def test_unopenable_database_is_a_startup_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not an SQLite file" * 100)
    engine = create_engine(DatabaseConfig(path=str(bad)))
    with pytest.raises(StartupError, match="index database cannot be opened"):
        await migrate(engine)
    await engine.dispose()


def test_database_directory_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StartupError, match="cannot be created"):
        create_engine(DatabaseConfig(path=str(tmp_path / "file" / "index.db")))


async def test_instance_rows_keep_what_the_record_says(repo_env: Any) -> None:
    repo, _, engine = repo_env
    rec = index_record(size=777)
    await repo.add_instance(rec)
    (row,) = await rows(engine, Instance, Instance.sop_class_uid, Instance.size,
                        Instance.source_ae, Instance.transfer_syntax_uid, Instance.path)
    assert tuple(row) == (rec.sop_class_uid, 777, "SCU", ExplicitVRLittleEndian,
                          str(rec.rel_path))


async def test_replace_into_another_study_leaves_no_empty_parents(repo_env: Any) -> None:
    repo, _, engine = repo_env
    old = index_record(patient="OLD")
    await repo.add_instance(old)
    moved = index_record(patient="NEW", sop=old.sop_instance_uid)
    await repo.add_instance(moved, replace=True)
    assert await repo.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1,
                                   "bytes": 100}
    (p,) = await rows(engine, Patient, Patient.patient_id, Patient.num_studies,
                      Patient.num_series, Patient.num_instances)
    assert tuple(p) == ("NEW", 1, 1, 1)


async def test_replace_into_another_study_of_the_same_patient(repo_env: Any) -> None:
    repo, _, engine = repo_env
    keep = index_record(patient="P1")
    old = index_record(patient="P1")
    await repo.add_instance(keep)
    await repo.add_instance(old)
    await repo.add_instance(index_record(patient="P1", sop=old.sop_instance_uid), replace=True)
    assert await repo.counts() == {"patients": 1, "studies": 2, "series": 2, "instances": 2,
                                   "bytes": 200}
    (p,) = await rows(engine, Patient, Patient.num_studies, Patient.num_series,
                      Patient.num_instances)
    assert tuple(p) == (2, 2, 2)
    studies = await rows(engine, Study, Study.study_instance_uid, Study.num_instances)
    assert old.study_instance_uid not in {s.study_instance_uid for s in studies}
    assert all(s.num_instances == 1 for s in studies)


async def test_replace_of_the_only_instance_in_place(repo_env: Any) -> None:
    repo, _, engine = repo_env
    old = index_record(patient="P1", size=1)
    await repo.add_instance(old)
    same = index_record(patient="P1", study=old.study_instance_uid, series=old.series_instance_uid,
                        sop=old.sop_instance_uid, size=2)
    assert await repo.add_instance(same, replace=True) == str(old.rel_path)
    assert await repo.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1,
                                   "bytes": 2}
    (p,) = await rows(engine, Patient, Patient.num_studies, Patient.num_series,
                      Patient.num_instances)
    assert tuple(p) == (1, 1, 1)
    (st,) = await rows(engine, Study, Study.num_series, Study.num_instances, Study.modalities)
    assert tuple(st) == (1, 1, "CT")


async def test_startup_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"\x00garbage" * 1000)
    engine = create_engine(DatabaseConfig(path=str(bad)))
    with pytest.raises(StartupError) as info:
        await migrate(engine)
    await engine.dispose()
    assert str(info.value) == "index database cannot be opened or upgraded: file is not a database"


async def test_writer_reconnects_after_a_database_restart(postgres_cluster: Any,
                                                          postgres_url: str) -> None:
    """The writer keeps one connection; a restart of the database server cuts it, and
    the next write must still commit (on a new connection), not fail its C-STORE."""
    cfg = DatabaseConfig(url=postgres_url)
    engine = create_engine(cfg)
    await migrate(engine)
    writer = create_engine(cfg, writer=True)
    repo = IndexRepository(engine, writer_engine=writer)
    await repo.start()
    try:
        await repo.add_instance(index_record())
        postgres_cluster.restart()
        after = index_record()
        await repo.add_instance(after)
        assert await repo.instance_path(after.sop_instance_uid) == str(after.rel_path)
        assert (await repo.counts())["instances"] == 2
    finally:
        await repo.close()
        await writer.dispose()
        await engine.dispose()


async def test_an_empty_patient_id_never_merges_studies(repo_env: Any) -> None:
    repo, _, engine = repo_env
    first, second = record(patient="", name="Test^S R"), record(patient="", name="Anonymized")
    await repo.add_instance(first)
    await repo.add_instance(second)
    await repo.add_instance(record(patient="", study=first.study_instance_uid,
                                   series=first.series_instance_uid, name="Test^S R"))
    patients = await rows(engine, Patient, Patient.patient_name, Patient.num_studies,
                          Patient.num_instances)
    assert sorted(tuple(p) for p in patients) == [("Anonymized", 1, 1), ("Test^S R", 1, 2)]


async def test_the_issuer_is_part_of_the_patient_key(repo_env: Any) -> None:
    repo, _, engine = repo_env
    await repo.add_instance(record(patient="123", issuer="HOSP_A", name="A^A"))
    await repo.add_instance(record(patient="123", issuer="HOSP_B", name="B^B"))
    await repo.add_instance(record(patient="123", issuer="HOSP_A", name="A^A"))
    patients = await rows(engine, Patient, Patient.issuer_of_patient_id, Patient.num_studies)
    assert sorted(tuple(p) for p in patients) == [("HOSP_A", 2), ("HOSP_B", 1)]


async def test_demographics_follow_the_newest_study_and_the_change_is_logged_once(
        repo_env: Any) -> None:
    repo, _, engine = repo_env
    old = record(patient="P9", name="Old^Name", sex="F")
    new = record(patient="P9", name="New^Name", sex="F")
    with structlog.testing.capture_logs() as logs:
        await repo.add_instance(old)
        await repo.add_instance(new)
        for rec in (new, old):   # more of both studies: nothing changes, nothing logged
            await repo.add_instance(record(patient="P9", study=rec.study_instance_uid,
                                           name=rec.patient["patient_name"], sex="F"))
    (p,) = await rows(engine, Patient, Patient.patient_name, Patient.patient_name_norm,
                      Patient.num_studies)
    assert tuple(p) == ("New^Name", "new^name", 2)
    studies = {r.study_instance_uid: r.patient_name for r in await rows(
        engine, Study, Study.study_instance_uid, Study.patient_name)}
    assert studies == {old.study_instance_uid: "Old^Name", new.study_instance_uid: "New^Name"}
    changes = [e for e in logs if e["event"] == "index.patient_demographics_changed"]
    assert len(changes) == 1
    assert changes[0]["log_level"] == "warning"
    assert changes[0]["previous_study_uid"] == old.study_instance_uid
    assert changes[0]["study_uid"] == new.study_instance_uid
    assert changes[0]["changed"] == ["PatientName"]
    assert not any("Name^" in str(v) or "^Name" in str(v) for e in logs for v in e.values())
