"""dcmtk storescu + findscu against `python -m pacs_server`: two studies without a
PatientID (pydicom's test-SR.dcm and ExplVR_BigEnd.dcm) keep their own patient names."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from support.dcmtk import findscu

pytestmark = pytest.mark.dcmtk

FILES = ("test-SR.dcm", "ExplVR_BigEnd.dcm")


def test_studies_without_patient_id_answer_their_own_names(
        run_pacs: Callable[..., Any], dcmtk: Any, tmp_path: Path) -> None:
    server = run_pacs()
    paths = [str(get_testdata_file(name)) for name in FILES]
    done = subprocess.run([dcmtk.tool("storescu"), "-aet", "STORESCU", "-aec", "PACS",
                           "127.0.0.1", str(server.port), *paths], env=dcmtk.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = {str(ds.StudyInstanceUID): str(ds.PatientName)
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    for model in ("-S", "-P"):
        for level, extra in (("STUDY", []), ("SERIES", ["SeriesInstanceUID"]),
                             ("IMAGE", ["SOPInstanceUID"])):
            result = findscu(server.port, level,
                             ["StudyInstanceUID", "PatientName", "PatientID", *extra],
                             tmp_path / f"find-{model}-{level}", model=model)
            assert result.returncode == 0, result.output[-3000:]
            got = {str(r.StudyInstanceUID): str(r.PatientName) for r in result.responses}
            assert got == sent, (model, level)
    patients = findscu(server.port, "PATIENT", ["PatientName", "NumberOfPatientRelatedStudies"],
                       tmp_path / "find-patients", model="-P")
    assert sorted(str(r.PatientName) for r in patients.responses) == sorted(sent.values())
    assert [int(r.NumberOfPatientRelatedStudies) for r in patients.responses] == [1, 1]
