"""index/commitment.py and the back-off of services/commitment.py on a real SQLite file
and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs_server.config import CommitmentConfig, DatabaseConfig
from pacs_server.errors import InvalidArgument
from pacs_server.index.commitment import ABANDONED, DELIVERED, PENDING, CommitmentRepository
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.repository import IndexRepository
from pacs_server.services.commitment import (
    CommitmentReport,
    CommitmentService,
    build_request,
)
from pacs_server.storage.filestore import FileStore

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def env(request: pytest.FixtureRequest,
              tmp_path: Path) -> AsyncIterator[tuple[CommitmentRepository, IndexRepository]]:
    cfg = DatabaseConfig(path=str(tmp_path / "index.db"))
    if request.param == "postgresql":
        cfg = DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    engine = create_engine(cfg)
    await migrate(engine)
    index = IndexRepository(engine)
    await index.start()
    yield CommitmentRepository(engine), index
    await index.close()
    await engine.dispose()


async def test_a_request_is_kept_with_its_references_and_is_due_at_once(env) -> None:
    repo, _ = env
    refs = [(CT_IMAGE, generate_uid()), (CT_IMAGE, generate_uid())]
    pk, duplicate = await repo.record("1.2.3", "MODALITY", refs, T0)
    assert not duplicate
    row = await repo.get(pk)
    assert row is not None
    assert (row.transaction_uid, row.calling_ae, row.state, row.refs, row.failures,
            row.attempts) == ("1.2.3", "MODALITY", PENDING, refs, None, 0)
    assert row.requested_at == T0 and row.next_attempt_at == T0
    assert [r.pk for r in await repo.due(T0)] == [pk]
    assert await repo.next_due() == T0


async def test_a_reused_transaction_uid_is_flagged(env) -> None:
    repo, _ = env
    await repo.record("1.2.3", "A", [(CT_IMAGE, "1.2.4")], T0)
    _, duplicate = await repo.record("1.2.3", "B", [(CT_IMAGE, "1.2.4")], T0)
    assert duplicate


async def test_retries_wait_and_finished_commitments_are_never_due(env) -> None:
    repo, _ = env
    first, _ = await repo.record("1.1", "A", [(CT_IMAGE, "1.2")], T0)
    second, _ = await repo.record("2.2", "A", [(CT_IMAGE, "1.3")], T0)
    await repo.retry_later(first, 1, T0 + timedelta(seconds=30), "refused")
    assert [r.pk for r in await repo.due(T0)] == [second]
    assert await repo.next_due() == T0
    await repo.finish(second, DELIVERED, T0, 1)
    assert await repo.due(T0 + timedelta(seconds=29)) == []
    assert await repo.next_due() == T0 + timedelta(seconds=30)
    due = await repo.due(T0 + timedelta(seconds=30))
    assert [(r.pk, r.attempts, r.last_error) for r in due] == [(first, 1, "refused")]
    assert [r.state for r in await repo.list()] == [DELIVERED, PENDING]


async def test_a_held_commitment_waits_until_its_holder_lets_go(env) -> None:
    """A node reporting on the requesting association holds the row: no runner of
    another node sees it due; a failed attempt or the holder's restart releases it."""
    repo, _ = env
    first, _ = await repo.record("1.1", "A", [(CT_IMAGE, "1.2")], T0)
    second, _ = await repo.record("2.2", "A", [(CT_IMAGE, "1.3")], T0)
    later = T0 + timedelta(seconds=90)
    await repo.hold(first, "node-a", later)
    await repo.hold(second, "node-b", later)
    assert await repo.due(T0 + timedelta(seconds=89)) == []
    await repo.unhold(first, T0)                         # node-a's attempt failed
    assert [r.pk for r in await repo.due(T0)] == [first]
    await repo.release_holds("node-a", T0)               # not node-b's
    assert [r.pk for r in await repo.due(T0)] == [first]
    await repo.release_holds("node-b", T0)               # node-b restarted
    assert [r.pk for r in await repo.due(T0)] == [first, second]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def test_back_off_doubles_up_to_the_maximum_then_gives_up(env, tmp_path: Path) -> None:
    repo, index = env
    clock = Clock()
    cfg = CommitmentConfig(retry_interval=10, max_retry_interval=25, give_up_after=100)
    svc = CommitmentService(repo, index, FileStore(tmp_path / "archive"), [CT_IMAGE], cfg,
                            clock=clock)
    pk = await svc.record(build_request("1.2.3", "A", [(1, CT_IMAGE, "1.2.4")]))
    report = await svc.report(pk)
    assert isinstance(report, CommitmentReport)
    assert report.failed == [(CT_IMAGE, "1.2.4", 0x0112)] and report.event_type == 2
    waits = []
    for attempt in range(1, 4):
        assert not await svc.not_delivered(report, attempt, "refused")
        row = await repo.get(pk)
        assert row is not None
        waits.append((row.next_attempt_at - clock.now).total_seconds())
    assert waits == [10, 20, 25]
    clock.now = T0 + timedelta(seconds=100)
    assert await svc.not_delivered(report, 4, "refused")
    row = await repo.get(pk)
    assert row is not None and row.state == ABANDONED
    assert await svc.report(pk) is None


@pytest.mark.parametrize(("uid", "refs", "message"), [
    ("", [(1, CT_IMAGE, "1.2")], "Transaction UID (0008,1195) is missing"),
    ("1.2", [], "Referenced SOP Sequence (0008,1199) is empty"),
    ("1.2", [(1, CT_IMAGE, "1.2"), (2, "", "1.3")],
     "Referenced SOP Class UID of item 2 is missing"),
    ("1.2", [(1, CT_IMAGE, "1." + "2" * 70)], "Referenced SOP Instance UID of item 1 is not"),
])
def test_build_request_names_the_bad_argument(uid: str, refs: list[tuple[int, str, str]],
                                              message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        build_request(uid, "A", refs)
    assert str(info.value).startswith(message)
