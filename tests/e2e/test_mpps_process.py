"""MPPS against `python -m pacs_server`: a step created, the server restarted, the step
completed, and the admin command reading what the running server wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from support.mpps import CONTEXTS, MPPS, create_attributes, final_modification
from support.scu import SUCCESS, Scu


def admin(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs_server", "mpps", *argv],
                          capture_output=True, text=True, timeout=60)


def test_step_across_a_restart(run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    scu = Scu("CT_01")
    db = str(tmp_path / "pacs.db")
    uid = generate_uid()
    server = run_pacs()
    assert "Modality Performed Procedure Step" in server.wait_for_event(
        "server.started")["services"]
    with scu.associate(server.port, CONTEXTS) as assoc:
        status, _ = assoc.send_n_create(create_attributes(), MPPS, uid)
        assert status.Status == SUCCESS
    shown = json.loads(admin("show", uid, "--json", "--db", db).stdout)
    assert (shown["status"], shown["calling_ae"]) == ("IN PROGRESS", "CT_01")
    assert server.stop() == 0

    server = run_pacs()
    with scu.associate(server.port, CONTEXTS) as assoc:
        status, _ = assoc.send_n_set(final_modification(), MPPS, uid)
        assert status.Status == SUCCESS
        late = Dataset()
        late.CommentsOnThePerformedProcedureStep = "too late"
        status, _ = assoc.send_n_set(late, MPPS, uid)
        assert (status.Status, status.ErrorID) == (0x0110, 0xA710)
    listed = admin("list", "--status", "COMPLETED", "--db", db)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:2] == [uid, "COMPLETED"]
    shown = json.loads(admin("show", uid, "--json", "--db", db).stdout)
    assert shown["attributes"]["00400252"]["Value"] == ["COMPLETED"]
    assert "too late" not in json.dumps(shown)
    events = [e for e in server.events() if e["event"] == "dimse.failed"]
    assert [e["status"] for e in events] == ["0x0110"]
    assert server.stop() == 0
    assert "Traceback" not in server.stderr
