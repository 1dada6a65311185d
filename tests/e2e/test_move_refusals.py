"""C-MOVE refusals and sub-operation failures (PS3.4 C.4.2.1.5, C.4.2.3.1).

- An identifier invalid for its level is refused with 0xA900 and an Error Comment
  before any association to the destination is opened: the destination is a dcmtk
  storescp whose log records every association it receives.
- A destination that is known and reachable but accepts none of the SOP classes or
  transfer syntaxes the retrieve needs fails each sub-operation: 0xA702 with every
  instance in the Failed SOP Instance UID List, not 0xA801 "destination unknown".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.multival import MultiValue
from pydicom.uid import JPEGBaseline8Bit

from support.config import FAST_STORAGE, peer, server_config
from support.dcmtk import QR_TOOLS, Storescp, ToolResult, movescu
from support.instances import CT_IMAGE, MR_IMAGE, bundled_dataset
from support.scp import StorageScp
from support.scu import SUCCESS, Response, Scu, identifier
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk(*QR_TOOLS)

ASSOCIATION_SEEN = "Association Received"     # what storescp -v logs for each one


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("move-refusals")
    storescp = Storescp(root / "storescp", ae_title="DCMDEST")
    no_storage = StorageScp("NOSTORE", sop_classes=())
    ct_jpeg_only = StorageScp("JPEGONLY", sop_classes=(CT_IMAGE,),
                              transfer_syntaxes=[str(JPEGBaseline8Bit)])
    peers = [peer("DCMDEST", storescp.port), peer("NOSTORE", no_storage.port),
             peer("JPEGONLY", ct_jpeg_only.port)]
    srv = RunningServer(server_config(root, {**FAST_STORAGE, "peers": peers,
                                             "retrieve.transcode": False})).start()
    try:
        study = "1.2.826.0.1.3680043.8.498.7101"
        series = "1.2.826.0.1.3680043.8.498.7102"
        items = [bundled_dataset("CT_small.dcm", StudyInstanceUID=study,
                                 SeriesInstanceUID=series, PatientID="PID-R",
                                 InstanceNumber=n) for n in (1, 2)]
        items.append(bundled_dataset("MR_small.dcm", StudyInstanceUID=study, PatientID="PID-R"))
        assert [r.status for r in Scu().store_datasets(srv.port, items)] == [SUCCESS] * 3
        yield {"server": srv, "storescp": storescp, "study": study, "series": series,
               "uids": [str(ds.SOPInstanceUID) for ds in items],
               "ct_uids": [str(ds.SOPInstanceUID) for ds in items[:2]]}
    finally:
        srv.stop()
        storescp.stop()
        no_storage.stop()
        ct_jpeg_only.stop()


def _associations(storescp: Storescp) -> int:
    return storescp.log().count(ASSOCIATION_SEEN)


def _error_comment(result: ToolResult) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.endswith(" ErrorComment")]
    return lines[-1] if lines else ""


INVALID = {
    "study level without StudyInstanceUID": ("STUDY", ["PatientID=PID-R"], "-S"),
    "series level without SeriesInstanceUID": ("SERIES", ["StudyInstanceUID={study}"], "-S"),
    "image level with a bad UID": ("IMAGE", ["StudyInstanceUID={study}",
                                             "SeriesInstanceUID={series}",
                                             "SOPInstanceUID=1.2.x.3"], "-S"),
    "wildcard in a UID": ("STUDY", ["StudyInstanceUID=1.2.826.*"], "-S"),
    "UID list above the level": ("SERIES", [r"StudyInstanceUID={study}\1.2.3",
                                            "SeriesInstanceUID={series}"], "-S"),
    "wildcard Patient ID": ("PATIENT", ["PatientID=PID*"], "-P"),
    "PATIENT level in Study Root": ("PATIENT", ["PatientID=PID-R"], "-S"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_identifier_is_refused_before_connecting(corpus: dict[str, Any],
                                                         case: str) -> None:
    level, keys, model = INVALID[case]
    keys = [k.format(study=corpus["study"], series=corpus["series"]) for k in keys]
    before = _associations(corpus["storescp"])
    result = movescu(corpus["server"].port, level, keys, "DCMDEST", model=model)
    assert result.statuses == [0xA900], result.output[-2000:]
    assert _error_comment(result), result.output[-2000:]
    assert _associations(corpus["storescp"]) == before


def test_unknown_destination_is_refused_before_connecting(corpus: dict[str, Any]) -> None:
    before = _associations(corpus["storescp"])
    result = movescu(corpus["server"].port, "STUDY", [f"StudyInstanceUID={corpus['study']}"],
                     "NOBODY")
    assert result.statuses == [0xA801]
    assert "NOBODY" in _error_comment(result)
    assert _associations(corpus["storescp"]) == before


def test_a_valid_move_does_reach_the_recording_destination(corpus: dict[str, Any]) -> None:
    """The control for the refusals: the same destination logs a real C-MOVE's association."""
    before = _associations(corpus["storescp"])
    result = movescu(corpus["server"].port, "STUDY", [f"StudyInstanceUID={corpus['study']}"],
                     "DCMDEST")
    assert result.final_status == SUCCESS
    assert _associations(corpus["storescp"]) == before + 1
    assert set(corpus["uids"]) <= set(corpus["storescp"].files())


def _failed_uids(final: Response) -> list[str]:
    assert final.identifier is not None
    value = final.identifier.FailedSOPInstanceUIDList
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


def test_destination_accepting_no_needed_sop_class_fails_every_suboperation(
        corpus: dict[str, Any]) -> None:
    rsps = Scu().move(corpus["server"].port,
                      identifier("STUDY", StudyInstanceUID=corpus["study"]), "NOSTORE")
    final = rsps[-1]
    assert final.status == 0xA702
    assert int(final.status_ds.NumberOfFailedSuboperations) == 3
    assert int(final.status_ds.NumberOfCompletedSuboperations) == 0
    assert sorted(_failed_uids(final)) == sorted(corpus["uids"])


def test_destination_accepting_no_needed_transfer_syntax_fails_those_suboperations(
        corpus: dict[str, Any]) -> None:
    """JPEGONLY takes CT in JPEG Baseline only (and no MR); transcoding is off, so
    nothing can be sent: 0xA702 listing every instance."""
    rsps = Scu().move(corpus["server"].port,
                      identifier("SERIES", StudyInstanceUID=corpus["study"],
                                 SeriesInstanceUID=corpus["series"]), "JPEGONLY")
    final = rsps[-1]
    assert final.status == 0xA702
    assert sorted(_failed_uids(final)) == sorted(corpus["ct_uids"])


def test_partial_failure_lists_what_the_destination_could_not_take(
        corpus: dict[str, Any], tmp_path: Any) -> None:
    """A destination taking MR only: the MR instance arrives, the CT ones are listed
    failed, 0xB000 (PS3.4 C.4.2.1.5)."""
    mr_only = StorageScp("MRONLY", sop_classes=(MR_IMAGE,))
    cfg = server_config(tmp_path, {**FAST_STORAGE, "peers": [peer("MRONLY", mr_only.port)]})
    srv = RunningServer(cfg).start()
    try:
        study = "1.2.826.0.1.3680043.8.498.7103"
        items = [bundled_dataset("CT_small.dcm", StudyInstanceUID=study),
                 bundled_dataset("MR_small.dcm", StudyInstanceUID=study)]
        assert [r.status for r in Scu().store_datasets(srv.port, items)] == [SUCCESS] * 2
        final = Scu().move(srv.port, identifier("STUDY", StudyInstanceUID=study), "MRONLY")[-1]
        assert final.status == 0xB000
        assert _failed_uids(final) == [str(items[0].SOPInstanceUID)]
        assert set(mr_only.received) == {str(items[1].SOPInstanceUID)}
    finally:
        srv.stop()
        mr_only.stop()
