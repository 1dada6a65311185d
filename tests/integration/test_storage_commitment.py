"""Storage Commitment Push Model against the real server in-process (PS3.4 Annex J).

The requester is a pynetdicom Storage Commitment SCU: it stores pydicom's test files
with C-STORE, sends N-ACTION (Request Storage Commitment) and takes the N-EVENT-REPORT
either on the same association (an EVT_N_EVENT_REPORT handler bound on it) or as an
SCP of its own that the server associates with, using SCP/SCU Role Selection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs_server.config import Config
from support.archive import indexed_path, query_index
from support.commitment import (
    FAST_RETRY,
    PUSH_INSTANCE,
    PUSH_MODEL,
    Reports,
    RequesterScp,
    action_information,
    peers,
    ref,
    request_commitment,
    requester_association,
    stored,
)
from support.instances import CT_IMAGE, MR_IMAGE, lenient_pydicom
from support.polling import free_port, wait_until
from support.server import RunningServer

# --------------------------------------------------------------------------- data

def archived_path(srv: RunningServer, uid: str) -> Path:
    path = indexed_path(srv.archive, srv.db, uid)
    assert path is not None
    return path


def commitment_rows(db: Path) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in query_index(
        db, "SELECT transaction_uid, state, attempts FROM commitments ORDER BY pk")]


def by_uid(seq: Iterable[Dataset], *extra: str) -> dict[str, tuple[Any, ...]]:
    return {str(it.ReferencedSOPInstanceUID): (str(it.ReferencedSOPClassUID),
                                               *[getattr(it, k) for k in extra]) for it in seq}


run = asyncio.to_thread
TIMEOUT = 20.0


# --------------------------------------------------------------------------- same association

async def test_all_present_is_reported_on_the_same_association(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 3)
    reports = Reports()
    uid = generate_uid()
    status = await run(request_commitment, app.port, refs, transaction_uid=uid,
                       reports=reports, wait_for_report=True)
    assert status.Status == 0x0000
    how, event_type, info = reports.got[0]
    assert (how, event_type) == ("same", 1)
    assert info.TransactionUID == uid
    assert by_uid(info.ReferencedSOPSequence) == {inst: (cls,) for cls, inst in refs}
    assert "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == "PACS"
    # Marked only after the N-EVENT-REPORT-RSP came back, just after the report arrived.
    await run(wait_until, lambda: commitment_rows(app.db) == [(uid, "delivered", 1)] and
              app.sample("pacs_commitment_reports_total", outcome="same_association") == 1,
              TIMEOUT, "delivered and counted")
    assert len(reports.got) == 1


async def test_two_requests_on_one_association_get_their_own_reports(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 2)
    reports = Reports()
    uids = [generate_uid(), generate_uid()]
    got = await run(_two_requests, app.port, refs, uids, reports)
    assert sorted((str(info.TransactionUID), how, event_type) for how, event_type, info in got) \
        == sorted((uid, "same", 1) for uid in uids)
    for _, _, info in got:
        index = uids.index(str(info.TransactionUID))
        assert by_uid(info.ReferencedSOPSequence) == {refs[index][1]: (refs[index][0],)}


def _two_requests(port: int, refs: list[tuple[str, str]], uids: list[str],
                  reports: Reports) -> list[tuple[str, int, Dataset]]:
    """Two N-ACTIONs back to back on one association, which stays open for both reports."""
    assoc = requester_association(port, reports)
    try:
        for uid, one in zip(uids, refs, strict=True):
            status, _ = assoc.send_n_action(action_information([one], uid), 1, PUSH_MODEL,
                                            PUSH_INSTANCE)
            assert status.Status == 0
        return reports.wait_for(2)
    finally:
        assoc.release()


async def test_missing_conflicting_and_unsupported_references_fail_with_their_reasons(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 2)
    (ct_cls, ct_uid), (mr_cls, mr_uid) = refs
    missing = (CT_IMAGE, generate_uid())
    unsupported = ("1.2.826.0.1.3680043.2.1143.999", generate_uid())  # not a storage class
    conflict = (MR_IMAGE, ct_uid)            # stored, but as CT Image Storage
    reports = Reports()
    await run(request_commitment, app.port, [refs[1], missing, unsupported, conflict],
              reports=reports, wait_for_report=True)
    _, event_type, info = reports.got[0]
    assert event_type == 2
    assert by_uid(info.ReferencedSOPSequence) == {mr_uid: (mr_cls,)}
    assert by_uid(info.FailedSOPSequence, "FailureReason") == {
        missing[1]: (CT_IMAGE, 0x0112),
        unsupported[1]: (unsupported[0], 0x0122),
        ct_uid: (MR_IMAGE, 0x0119),
    }


async def test_deleted_and_truncated_files_fail_with_processing_failure(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 3)
    deleted = archived_path(app, refs[0][1])
    truncated = archived_path(app, refs[1][1])
    deleted.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    reports = Reports()
    await run(request_commitment, app.port, refs, reports=reports, wait_for_report=True)
    _, event_type, info = reports.got[0]
    assert event_type == 2
    assert by_uid(info.FailedSOPSequence, "FailureReason") == {
        refs[0][1]: (refs[0][0], 0x0110), refs[1][1]: (refs[1][0], 0x0110)}
    assert by_uid(info.ReferencedSOPSequence) == {refs[2][1]: (refs[2][0],)}


async def test_a_file_replaced_by_another_instance_is_not_committed(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 2)
    refs += await run(stored, app.port, 1)           # a second CT Image
    first, third = archived_path(app, refs[0][1]), archived_path(app, refs[2][1])
    # The other instance's bytes at the indexed size: only the File Meta tells.
    size = first.stat().st_size
    first.write_bytes(third.read_bytes()[:size].ljust(size, b"\0"))
    reports = Reports()
    await run(request_commitment, app.port, refs, reports=reports, wait_for_report=True)
    _, event_type, info = reports.got[0]
    assert event_type == 2
    assert by_uid(info.FailedSOPSequence, "FailureReason") == {
        refs[0][1]: (refs[0][0], 0x0110)}


# --------------------------------------------------------------------------- new association

async def test_report_goes_over_a_new_association_when_the_requester_released(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    scp = RequesterScp()
    try:
        app = await start_server(make_cfg(peers(scp.port)))
        refs = await run(stored, app.port, 2)
        uid = generate_uid()
        # No N-EVENT-REPORT handler on the requesting association: should the report
        # still catch it while it is being released, the requester refuses it there.
        started = time.monotonic()
        status = await run(request_commitment, app.port, refs, transaction_uid=uid)
        assert status.Status == 0x0000
        # The release is answered at once: the report does not collide with it (a
        # requester releasing never sees an N-EVENT-REPORT it would ignore and wait for).
        assert time.monotonic() - started < 5.0
        how, event_type, info = await run(scp.reports.wait)
        assert (how, event_type, info.TransactionUID) == ("new", 1, uid)
        assert by_uid(info.ReferencedSOPSequence) == {inst: (cls,) for cls, inst in refs}
        # We proposed the SCP role only and the requester accepted it, so on its side
        # (the acceptor) it is the SCU of the context (PS3.4 J.3.3, PS3.7 D.3.3.4).
        assert scp.roles == [(True, False)]
        await run(wait_until, lambda: commitment_rows(app.db) == [(uid, "delivered", 1)],
                  TIMEOUT, "delivered")
        assert len(scp.reports.got) == 1
    finally:
        scp.stop()


async def test_same_association_can_be_turned_off(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    scp = RequesterScp()
    try:
        app = await start_server(make_cfg({**peers(scp.port),
                                           "commitment.report_on_same_association": False}))
        refs = await run(stored, app.port, 1)
        same = Reports()
        # The association stays open until the report arrived: it arrives elsewhere.
        ds = await run(_request_and_wait_elsewhere, app.port, refs, same, scp)
        assert ds.Status == 0
        assert [how for how, _, _ in scp.reports.got] == ["new"] and not same.got
    finally:
        scp.stop()


def _request_and_wait_elsewhere(port: int, refs: list[tuple[str, str]], same: Reports,
                                scp: RequesterScp) -> Dataset:
    assoc = requester_association(port, same)
    try:
        status, _ = assoc.send_n_action(action_information(refs), 1, PUSH_MODEL,
                                        PUSH_INSTANCE)
        scp.reports.wait()
        return status
    finally:
        assoc.release()


async def test_unreachable_requester_is_retried_and_survives_a_restart(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    port = free_port()                            # nothing listens there yet
    cfg = make_cfg({**peers(port), **FAST_RETRY})
    app = await start_server(cfg)
    refs = await run(stored, app.port, 2)
    uid = generate_uid()
    assert (await run(request_commitment, app.port, refs, transaction_uid=uid)).Status == 0
    db = app.db
    await run(wait_until, lambda: commitment_rows(db)[0][2] >= 2, TIMEOUT, "two failed attempts")
    await run(app.stop)
    assert commitment_rows(db)[0][1] == "pending"

    scp = RequesterScp(port)
    try:
        await start_server(cfg)                   # the same archive and index again
        how, event_type, info = await run(scp.reports.wait)
        assert (how, event_type, info.TransactionUID) == ("new", 1, uid)
        await asyncio.sleep(1.0)                  # several retry intervals: no second copy
        assert len(scp.reports.got) == 1 and scp.associations == 1
        rows = commitment_rows(db)
        assert [(r[0], r[1]) for r in rows] == [(uid, "delivered")]
    finally:
        scp.stop()


async def test_requester_missing_from_peers_is_kept_pending_then_abandoned(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg({**FAST_RETRY, "commitment.give_up_after": 1.0})
    app = await start_server(cfg)
    refs = await run(stored, app.port, 1)
    assert (await run(request_commitment, app.port, refs)).Status == 0
    db = app.db
    await run(wait_until, lambda: commitment_rows(db)[0][1] == "abandoned", TIMEOUT,
              "abandoned")
    [(error,)] = query_index(db, "SELECT last_error FROM commitments")
    assert "not in peers" in error


async def test_adding_the_requester_to_peers_with_a_reload_delivers_the_report(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    overrides: dict[str, Any] = dict(FAST_RETRY)
    app = await start_server(make_cfg(overrides),
                             reload_config=lambda: make_cfg(overrides))
    refs = await run(stored, app.port, 1)
    uid = generate_uid()
    assert (await run(request_commitment, app.port, refs, transaction_uid=uid)).Status == 0
    db = app.db
    await run(wait_until, lambda: commitment_rows(db)[0][2] >= 1, TIMEOUT, "a failed attempt")
    scp = RequesterScp()
    try:
        overrides.update(peers(scp.port))
        assert await run(app.reload)
        how, event_type, info = await run(scp.reports.wait)
        assert (how, event_type, info.TransactionUID) == ("new", 1, uid)
        await run(wait_until, lambda: commitment_rows(db)[0][1] == "delivered", TIMEOUT,
                  "delivered")
    finally:
        scp.stop()


# --------------------------------------------------------------------------- invalid N-ACTION

def _info(**attrs: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


with lenient_pydicom():
    INVALID = {
        "no transaction uid": (dict(info=_info(ReferencedSOPSequence=[ref(CT_IMAGE, "1.2.3")])),
                               0x0115, "Transaction UID (0008,1195) is missing"),
        "bad transaction uid": (dict(info=_info(TransactionUID="1.2.abc",
                                                ReferencedSOPSequence=[ref(CT_IMAGE, "1.2.3")])),
                                0x0115, "Transaction UID (0008,1195) is not a valid UID"),
        "empty sequence": (dict(info=_info(TransactionUID="1.2.3", ReferencedSOPSequence=[])),
                           0x0115, "Referenced SOP Sequence (0008,1199) is empty"),
        "no sequence": (dict(info=_info(TransactionUID="1.2.3")),
                        0x0115, "Referenced SOP Sequence (0008,1199) is missing"),
        "bad instance uid": (dict(info=_info(TransactionUID="1.2.3",
                                             ReferencedSOPSequence=[ref(CT_IMAGE, "x.1")])),
                             0x0115, "Referenced SOP Instance UID of item 1 is not a valid"),
        "action type 2": (dict(refs=[(CT_IMAGE, "1.2.3")], action_type=2), 0x0123,
                          "Action Type ID 2 is not defined"),
        "wrong instance": (dict(refs=[(CT_IMAGE, "1.2.3")], instance="1.2.3.4"), 0x0112,
                           "Requested SOP Instance must be 1.2.840.10008.1.20.1.1"),
    }


@pytest.mark.parametrize("case", INVALID)
async def test_invalid_n_action_gets_a_failure_with_an_error_comment(
        case: str, server: RunningServer) -> None:
    kwargs, code, comment = INVALID[case]
    kwargs = {"refs": [], **kwargs}
    status = await run(lambda: request_commitment(server.port, **kwargs))
    assert status.Status == code
    assert str(status.ErrorComment).startswith(comment)
    assert commitment_rows(server.db) == []


async def test_a_reused_transaction_uid_fails_every_reference_with_0131(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    refs = await run(stored, app.port, 1)
    uid = generate_uid()
    first, second = Reports(), Reports()
    await run(request_commitment, app.port, refs, transaction_uid=uid, reports=first,
              wait_for_report=True)
    await run(request_commitment, app.port, refs, transaction_uid=uid, reports=second,
              wait_for_report=True)
    assert first.got[0][1] == 1
    _, event_type, info = second.got[0]
    assert event_type == 2
    assert by_uid(info.FailedSOPSequence, "FailureReason") == {refs[0][1]: (refs[0][0], 0x0131)}
