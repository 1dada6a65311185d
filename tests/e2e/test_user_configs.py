"""The configuration files users already have load as written: check-config and a real
start of `pacs_server` and `store_scp` with the unchanged files (tests/fixtures/configs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.archive import archived_files
from support.config import transport_args
from support.instances import CT_IMAGE, DicomFiles
from support.scu import SUCCESS, Scu, wait_until_responds

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def copy_config(name: str, where: Path) -> Path:
    target = where / name
    shutil.copyfile(CONFIGS / name, target)
    assert target.read_bytes() == (CONFIGS / name).read_bytes()
    return target


@pytest.mark.parametrize(("module", "name", "args"), [
    ("pacs_server", "pacs_server.yaml", ["check-config"]),
    ("pacs_server.store_scp", "store_scp.yaml", ["--check-config"]),
])
def test_check_config_accepts_the_file(tmp_path: Path, module: str, name: str,
                                       args: list[str]) -> None:
    path = copy_config(name, tmp_path)
    result = subprocess.run([sys.executable, "-m", module, *args, "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK"


def test_pacs_server_starts_with_the_file(spawn: Callable[..., Any], tmp_path: Path,
                                          dicom_files: DicomFiles) -> None:
    path = copy_config("pacs_server.yaml", tmp_path)
    # Only the ports are overridden (the file's 11112 and 9090 may be taken here).
    proc = spawn([sys.executable, "-m", "pacs_server", "--config", str(path), "--port", "0",
                  "--host", "127.0.0.1", "--metrics-port", "0", *transport_args()], tmp_path)
    started = proc.wait_for_event("server.started")
    assert started["ae_title"] == "MY_PACS"
    assert started["naming"] == "hierarchical"
    wait_until_responds(started["port"], called="MY_PACS")
    sent = dicom_files.fresh("CT_small.dcm")
    assert Scu().store(started["port"], [sent], called="MY_PACS")[0].status == SUCCESS
    assert len(archived_files(tmp_path / "archive")) == 1
    assert (tmp_path / "pacs.db").is_file()
    assert (tmp_path / "logs" / "pacs.log").is_file()
    with urllib.request.urlopen(
            f"http://127.0.0.1:{started['metrics_port']}/metrics", timeout=10) as rsp:
        assert b"pacs_dimse_requests_total" in rsp.read()
    assert proc.stop() == 0


def test_store_scp_starts_from_the_file_alone(spawn: Callable[..., Any], tmp_path: Path,
                                              dicom_files: DicomFiles) -> None:
    path = copy_config("store_scp.yaml", tmp_path)
    # The positional port overrides the file's 11112; AE title and directory come from it.
    proc = spawn([sys.executable, "-m", "pacs_server.store_scp", "0", "--config", str(path),
                  "--host", "127.0.0.1"], tmp_path)
    line = proc.wait_for_line(lambda s: " listening on " in s, what="listening line")
    assert line.startswith("store_scp: MY_PACS listening on 127.0.0.1:")
    assert "storing into ./received (indexed)" in line
    port = int(line.split("127.0.0.1:")[1].split(",")[0])
    wait_until_responds(port, called="MY_PACS")
    ct = dicom_files.fresh("CT_small.dcm")
    assert Scu().store(port, [ct], called="MY_PACS")[0].status == SUCCESS
    # Accepted: CT, MR and US Image Storage only.
    rtplan = dicom_files.fresh("rtplan.dcm")
    with pytest.raises(ValueError, match="No presentation context"):
        Scu().store(port, [rtplan], called="MY_PACS")
    assert len(archived_files(tmp_path / "received")) == 1
    assert (tmp_path / "pacs.db").is_file()
    assert proc.stop() == 0


def test_store_scp_without_config_needs_port_and_title(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pacs_server.store_scp"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("store_scp: PORT, AE_TITLE and --storage-dir are "
                                     "required without --config")


def test_us_image_storage_is_ultrasound() -> None:
    from pacs_server.sop_classes import resolve_storage_classes

    assert resolve_storage_classes(["US Image Storage", "CT Image Storage"]) == (
        "1.2.840.10008.5.1.4.1.1.6.1", CT_IMAGE)
