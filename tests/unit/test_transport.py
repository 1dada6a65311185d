"""dicom/transport.py and services/transcode.py: what retrieve sends (the upstream
source the overrides rely on is pinned in test_transport_pins.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.association import Association

from pacs_server.dicom.file_sending import StoredFile
from pacs_server.dicom.transport import PacsAssociation
from pacs_server.services.transcode import plan


def test_stored_file_carries_only_the_uids() -> None:
    ref = StoredFile(Path("/archive/x.dcm"), "1.2.840.10008.5.1.4.1.1.2", "1.2.3",
                     ExplicitVRLittleEndian)
    assert [e.keyword for e in ref] == ["SOPClassUID", "SOPInstanceUID"]
    assert ref.stored_path == Path("/archive/x.dcm") and ref.allow_transcode
    assert issubclass(PacsAssociation, Association)


@pytest.mark.parametrize(("stored", "accepted", "expected"), [
    (ExplicitVRLittleEndian, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (JPEG2000Lossless, ["1.2.840.10008.1.2", JPEG2000Lossless], JPEG2000Lossless),
    (JPEG2000Lossless, ["1.2.840.10008.1.2"], "1.2.840.10008.1.2"),
    ("1.2.840.10008.1.2.2", [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (ExplicitVRLittleEndian, [JPEG2000Lossless], JPEG2000Lossless),
    # JPEG Baseline decoded for an uncompressed peer (the result stays flagged lossy);
    # there is no JPEG Baseline encoder to send in.
    ("1.2.840.10008.1.2.4.50", [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ("1.2.840.10008.1.2.4.50", [], None),
    (ExplicitVRLittleEndian, ["1.2.840.10008.1.2.4.50"], None),
])
def test_plan(stored: str, accepted: list[str], expected: str | None) -> None:
    assert plan(stored, accepted) == expected
