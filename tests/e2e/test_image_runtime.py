"""The container image's runtime stage, without Docker: what the Dockerfile does to the
package and to the process, done here so that a change which would break the image
fails in CI (no Docker daemon or registry is needed).

The wheel is built from the tree and installed, not editable, with its dependencies
into a fresh virtual environment; the
server is started with the Dockerfile's CMD and docker/pacs_server.yaml, `/data` and
`/opt/pacs_server/viewer` pointing at a scratch directory and the fetched viewer, and
as the image's unprivileged user when the suite runs as root. Then what a user of the
image does: the HEALTHCHECK command, a storescu, the viewer, `docker kill -s HUP` and
`docker stop`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.archive import archived_files
from support.config import transport_args
from support.dcmtk import Dcmtk
from support.instances import DicomFiles
from support.scu import wait_until_responds
from support.viewer import ohif_dir

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
IMAGE_CONFIG = REPO / "docker" / "pacs_server.yaml"
IMAGE_UID = 10001       # the Dockerfile's `pacs` user and group


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form argument list of the Dockerfile's (last) `instruction`."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.findall(rf"^{instruction}\s+.*?(\[.*\])\s*$", text, re.M)
    assert found, f"no exec-form {instruction} in the Dockerfile"
    argv: list[str] = json.loads(found[-1])
    return argv


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A virtual environment holding the package as `pip install .` leaves it (outside
    pytest's tmp, which only root may enter)."""
    work = Path(tempfile.mkdtemp(prefix="pacs-image-"))
    os.chmod(work, 0o755)
    try:
        yield install_wheel(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install_wheel(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(work / "wheel"), str(REPO)], check=True, timeout=600)
    (wheel,) = (work / "wheel").glob("pacs_server-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # With its declared dependencies, as the image's `pip install .` (from pip's cache
    # after `make install`): a dependency missing from pyproject.toml fails here, and
    # the image's user needs nothing of the checkout, which it may not be able to read.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    str(wheel)], check=True, timeout=600)
    where = subprocess.run([str(python), "-c", "import pacs_server; print(pacs_server.__file__)"],
                           check=True, capture_output=True, text=True, cwd="/").stdout
    assert Path(where.strip()).is_relative_to(venv), where
    return venv


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The image's /data volume: owned by its user, outside pytest's private tmp."""
    path = Path(tempfile.mkdtemp(prefix="pacs-image-data-"))
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, IMAGE_UID, IMAGE_UID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def image_config(data: Path, viewer: Path) -> Path:
    """docker/pacs_server.yaml with the image's paths mapped here, on loopback only."""
    text = IMAGE_CONFIG.read_text()
    for container, here in (("/opt/pacs_server/viewer", str(viewer)), ("/data", str(data)),
                            ("0.0.0.0", "127.0.0.1")):
        assert container in text, f"{container} no longer in {IMAGE_CONFIG.name}"
        text = text.replace(container, here)
    path = data / "pacs_server.yaml"
    path.write_text(text)
    return path


def as_image_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups",
            *argv]


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:         # another filesystem
        shutil.copy2(src, dst)


def baked_viewer(installed: Path) -> Path:
    """The fetched viewer beside the environment, as the image's viewer stage copies it
    into /opt: the image's user may not be able to read the checkout's .viewer."""
    dest = installed.parent / "viewer"
    if not dest.exists():
        shutil.copytree(ohif_dir(), dest, copy_function=link_or_copy)
    return dest


def test_the_image_runtime_serves_from_the_installed_package(
        installed: Path, data_dir: Path, spawn: Callable[..., Any], dcmtk: Dcmtk,
        dicom_files: DicomFiles) -> None:
    config = image_config(data_dir, baked_viewer(installed))
    program, *args = dockerfile_json("CMD")
    assert args == ["--config", "/etc/pacs_server.yaml"], args
    # Only the ports: the image's 11112 and 9110 may be taken on this machine.
    argv = [str(installed / "bin" / program), "--config", str(config), "--port", "0",
            "--metrics-port", "0", *transport_args()]
    proc = spawn(as_image_user(argv), data_dir)
    started = proc.wait_for_event("server.started")
    assert started["storage"] == str(data_dir / "archive")
    wait_until_responds(started["port"], called=started["ae_title"])

    # HEALTHCHECK, as Docker runs it (CMD form, the image's python on PATH).
    check = dockerfile_json("HEALTHCHECK")
    assert check[0] == "python"
    probe = [str(installed / "bin" / "python"),
             *(a.replace(":9110/", f":{started['metrics_port']}/") for a in check[1:])]
    assert subprocess.run(probe, timeout=30).returncode == 0

    # A modality's storescu, into the volume, as the image's user.
    sent = dicom_files.fresh("CT_small.dcm")
    store = subprocess.run([dcmtk.tool("storescu"), "-aec", started["ae_title"], "127.0.0.1",
                            str(started["port"]), str(sent)], env=dcmtk.env,
                           capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    (stored,) = archived_files(data_dir / "archive")
    assert stored.read_bytes()[128:132] == b"DICM"
    if os.geteuid() == 0:
        assert stored.stat().st_uid == IMAGE_UID
        assert (data_dir / "pacs.db").stat().st_uid == IMAGE_UID

    # The viewer baked into the image, and the study it lists.
    base = f"http://127.0.0.1:{started['metrics_port']}"
    with urllib.request.urlopen(f"{base}/viewer/", timeout=10) as rsp:
        assert rsp.status == 200 and b"<html" in rsp.read().lower()
    with urllib.request.urlopen(f"{base}/dicom-web/studies", timeout=10) as rsp:
        assert len(json.loads(rsp.read())) == 1

    # `docker kill -s HUP`: the file is read again; `docker stop`: drain, exit 0.
    mark = proc.mark()
    proc.signal(signal.SIGHUP)
    proc.wait_for_event("config.reload_unchanged", start=mark)
    assert proc.stop() == 0
