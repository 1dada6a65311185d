"""dicom/transport.py: the upstream code our overrides depend on has not changed, and the
overrides do what they say.

A digest of the source of every pynetdicom function the transport module copies,
overrides or relies on the inner workings of. A pynetdicom upgrade that changes one of
them fails here, so that the override is re-read against the new upstream code before
the digest is updated (pyproject.toml pins the tested minor version).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.transport import RequestHandler

from pacs_server.dicom.transport import PacsAssociation, StoredFile
from pacs_server.services.transcode import plan

UPSTREAM: dict[str, tuple[Callable[..., Any], str]] = {
    # copied with one line changed (the Association class)
    "RequestHandler._create_association": (RequestHandler._create_association,
                                           "05c8d12b79863cdb"),
    # called by our override with a path or a converted dataset
    "Association.send_c_store": (Association.send_c_store, "fa5a8127f349f8e7"),
    # its result's class is switched to PacsAssociation
    "AE.associate": (ApplicationEntity.associate, "dbc8cf47090386b2"),
    # what transport.start_server() does in its place
    "AE.start_server": (ApplicationEntity.start_server, "d3868a2df83d3cc0"),
    # hand each yielded Dataset (our StoredFile) to send_c_store
    "QueryRetrieveServiceClass._get_scp": (QueryRetrieveServiceClass._get_scp,
                                           "8ca1538e3e56c4f7"),
    "QueryRetrieveServiceClass._move_scp": (QueryRetrieveServiceClass._move_scp,
                                            "5c14d1be3d737bef"),
}


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_upstream_source_is_the_one_the_overrides_were_written_against(name: str) -> None:
    fn, digest = UPSTREAM[name]
    actual = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    assert actual == digest, (
        f"pynetdicom {pynetdicom.__version__} changed {name}: re-read the override in "
        f"src/pacs_server/dicom/transport.py against it, then update the digest")


def test_pynetdicom_is_the_tested_minor_version() -> None:
    assert pynetdicom.__version__.startswith("3.0."), pynetdicom.__version__


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
