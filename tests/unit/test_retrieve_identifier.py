"""The retrieve identifier's rules for its level (services/retrieve.check_identifier,
PS3.4 C.4.2.1.4.1 / C.4.3.1.3.1), on identifiers decoded as the C-MOVE SCP decodes them."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacs_server.dicom.identifiers import parse_identifier
from pacs_server.errors import InvalidQuery
from pacs_server.services.retrieve import check_identifier
from support.instances import lenient_pydicom
from support.scu import MOVE_S

MOVE_P = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def check(level: str, model: str = str(MOVE_S), **keys: Any) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    # Invalid UIDs are what some cases are about; the server reads without pydicom's
    # value validation too (dicom/runtime.py).
    with lenient_pydicom():
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        check_identifier(parse_identifier(ds, model))


@pytest.mark.parametrize(("level", "model", "keys"), [
    ("STUDY", str(MOVE_S), {"StudyInstanceUID": STUDY}),
    ("STUDY", str(MOVE_S), {"StudyInstanceUID": [STUDY, SERIES]}),      # List of UID
    ("SERIES", str(MOVE_S), {"SeriesInstanceUID": SERIES}),            # keys above optional
    ("SERIES", str(MOVE_S), {"StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES}),
    ("IMAGE", str(MOVE_S), {"SOPInstanceUID": [STUDY, SERIES], "StudyInstanceUID": ""}),
    ("PATIENT", MOVE_P, {"PatientID": "PID 1"}),
    ("STUDY", MOVE_P, {"PatientID": "PID-1", "StudyInstanceUID": STUDY}),
    ("STUDY", str(MOVE_S), {"PatientID": "PID*", "StudyInstanceUID": STUDY}),  # not a key here
])
def test_valid(level: str, model: str, keys: dict[str, Any]) -> None:
    check(level, model, **keys)


@pytest.mark.parametrize(("level", "model", "keys", "message"), [
    ("STUDY", str(MOVE_S), {"PatientID": "PID-1"}, "needs StudyInstanceUID"),
    ("STUDY", str(MOVE_S), {"StudyInstanceUID": ""}, "needs StudyInstanceUID"),
    ("SERIES", str(MOVE_S), {"StudyInstanceUID": STUDY}, "needs SeriesInstanceUID"),
    ("IMAGE", str(MOVE_S), {"SOPInstanceUID": "1.2.x"}, "not a valid UID"),
    ("STUDY", str(MOVE_S), {"StudyInstanceUID": "1.2.*"}, "not a valid UID"),
    ("STUDY", str(MOVE_S), {"StudyInstanceUID": "1." + "2" * 70}, "not a valid UID"),
    ("SERIES", str(MOVE_S), {"StudyInstanceUID": [STUDY, SERIES], "SeriesInstanceUID": SERIES},
     "StudyInstanceUID must be one value"),
    ("PATIENT", MOVE_P, {"PatientID": "PID*"}, "no wildcards"),
    ("PATIENT", MOVE_P, {"PatientID": ["A", "B"]}, "PatientID must be one value"),
    ("STUDY", MOVE_P, {"PatientID": "A?", "StudyInstanceUID": STUDY}, "no wildcards"),
])
def test_invalid(level: str, model: str, keys: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        check(level, model, **keys)
