"""Who may associate, and with what: calling-AE whitelist, called AE, accepted classes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacs_server.config import Config
from support.archive import index_counts
from support.instances import CT_IMAGE, MR_IMAGE, DicomFiles
from support.polling import wait_until
from support.scu import SUCCESS, VERIFICATION, Scu, send
from support.server import RunningServer


def outcome(port: int | None, calling: str, called: str = "PACS") -> str:
    """'accepted', 'rejected' or 'aborted' for one association attempt (blocking)."""
    with Scu(calling).associate(port, called=called, require=False) as assoc:
        if assoc.is_established:
            status = assoc.send_c_echo()
            assert status.Status == SUCCESS
            return "accepted"
        return "rejected" if assoc.is_rejected else "aborted"


async def attempt(port: int | None, calling: str, called: str = "PACS") -> str:
    return await asyncio.to_thread(outcome, port, calling, called)


async def test_any_calling_ae_by_default(server: RunningServer) -> None:
    assert await attempt(server.port, "ANYONE") == "accepted"
    assert await attempt(server.port, "SOMEONE-ELSE") == "accepted"


async def test_calling_ae_whitelist(start_server: Callable[..., Any],
                                    make_cfg: Callable[..., Config]) -> None:
    # A loaded machine may take longer than the 5 s default between accept and the
    # A-ASSOCIATE-RQ being read (it was seen as "aborted", pdu.read_timeout or
    # association.negotiation_timeout in the log): the whitelist is what is tested here.
    app = await start_server(make_cfg({"access_control.allowed_ae_titles": ["GOODSCU", "CT01"],
                                       "server.ae_title": "PACS",
                                       "server.negotiation_timeout": 30.0}))

    def rejections() -> float:
        return app.sample("pacs_associations_total", outcome="rejected") or 0.0

    before = rejections()  # the readiness probe's AE title is not listed either
    assert await attempt(app.port, "GOODSCU") == "accepted"
    assert await attempt(app.port, "CT01") == "accepted"
    assert await attempt(app.port, "BADSCU") == "rejected"
    assert await attempt(app.port, "goodscu") == "rejected"
    await asyncio.to_thread(wait_until, lambda: rejections() == before + 2, 5.0,
                            "two rejections counted")


async def test_whitelist_reload(start_server: Callable[..., Any],
                                make_cfg: Callable[..., Config]) -> None:
    """allowed_ae_titles is reloadable: new associations see the new list."""
    allowed = ["OLD"]

    def current() -> Config:
        return make_cfg({"access_control.allowed_ae_titles": allowed})

    app = await start_server(current(), reload_config=current)
    assert await attempt(app.port, "NEW") == "rejected"
    allowed = ["NEW"]
    assert app.reload() is True
    assert await attempt(app.port, "NEW") == "accepted"
    assert await attempt(app.port, "OLD") == "rejected"
    allowed = ["*"]
    assert app.reload() is True
    assert await attempt(app.port, "OLD") == "accepted"


@pytest.mark.parametrize(("required", "wrong_called"), [(True, "rejected"),
                                                        (False, "accepted")])
async def test_called_ae_title(start_server: Callable[..., Any],
                               make_cfg: Callable[..., Config], required: bool,
                               wrong_called: str) -> None:
    app = await start_server(make_cfg({"server.require_called_ae_title": required,
                                       "server.ae_title": "ARCHIVE"}))
    assert await attempt(app.port, "SCU", called="ARCHIVE") == "accepted"
    assert await attempt(app.port, "SCU", called="SOMEBODY") == wrong_called


async def test_accepted_sop_classes_narrow_negotiation(start_server: Callable[..., Any],
                                                       make_cfg: Callable[..., Config],
                                                       dicom_files: DicomFiles) -> None:
    app = await start_server(make_cfg({"storage.accepted_sop_classes": ["CT"]}))
    ct = dicom_files.fresh("CT_small.dcm")
    mr = dicom_files.fresh("MR_small.dcm")

    def negotiate_and_store() -> tuple[set[str], set[str], int, bool]:
        scu = Scu()
        contexts = [(CT_IMAGE, [str(ExplicitVRLittleEndian)]),
                    (MR_IMAGE, [str(ExplicitVRLittleEndian)])]
        with scu.associate(app.port, contexts) as assoc:
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
            ct_status = send(assoc, ct).status
            try:
                send(assoc, mr)
                mr_sent = True
            except ValueError:  # no accepted presentation context for MR
                mr_sent = False
        return accepted, rejected, ct_status, mr_sent

    accepted, rejected, ct_status, mr_sent = await asyncio.to_thread(negotiate_and_store)
    assert CT_IMAGE in accepted and MR_IMAGE not in accepted
    assert MR_IMAGE in rejected
    assert ct_status == SUCCESS
    assert mr_sent is False
    assert index_counts(app.db)["instances"] == 1


async def test_accepted_sop_classes_by_uid_and_name(start_server: Callable[..., Any],
                                                    make_cfg: Callable[..., Config],
                                                    scu: Scu, dicom_files: DicomFiles) -> None:
    app = await start_server(make_cfg({"storage.accepted_sop_classes": [
        "MR Image Storage", "1.2.840.10008.5.1.4.1.1.7"]}))
    mr = dicom_files.fresh("MR_small.dcm")
    sc = dicom_files.fresh("SC_rgb_rle.dcm")
    results = await scu.astore(app.port, [mr, sc])
    assert [r.status for r in results] == [SUCCESS, SUCCESS]
    with pytest.raises(ValueError):
        await scu.astore(app.port, [dicom_files.fresh("CT_small.dcm")])


async def test_no_storage_context_at_all_still_associates_for_echo(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg({"storage.accepted_sop_classes": ["CT"]}))

    def only_mr() -> tuple[bool, list[str]]:
        with Scu().associate(app.port, [(MR_IMAGE, [ExplicitVRLittleEndian])]) as assoc:
            return assoc.is_established, [str(c.abstract_syntax)
                                          for c in assoc.accepted_contexts]

    established, accepted = await asyncio.to_thread(only_mr)
    assert established
    assert accepted == [VERIFICATION]
