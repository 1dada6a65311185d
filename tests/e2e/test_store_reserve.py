"""Below storage.min_free_bytes a C-STORE data set is refused before it is received.

storescu sends a 20 MB instance to a server whose reserve is 1 GB more than the free
space: the answer is 0xA700 with an Error Comment, no file ever appears in the
archive's .incoming (watched throughout the transfer), the server's memory does not
grow by the data set, and /healthz says 503. With the reserve lowered (SIGHUP's
reload), the same transfer does go through .incoming: the watch sees what it looks for.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pacs_server.config import Config
from support.archive import archived_files
from support.config import server_config
from support.dcmtk import dcmtk_env, tool
from support.http import base_url, http_get
from support.instances import DicomFiles
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk("storescu")

SIZE = 20 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


@dataclass
class Watch:
    """The files that appeared under a directory (every process's receive directory of
    `.incoming`), and this process's peak RSS, while it ran."""

    seen: set[str] = field(default_factory=set)
    peak_rss: int = 0


@contextmanager
def watching(directory: Path) -> Iterator[Watch]:
    watch = Watch(peak_rss=_rss())
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for dirpath, _dirs, names in os.walk(directory):
                watch.seen.update(os.path.join(dirpath, n) for n in names)
            watch.peak_rss = max(watch.peak_rss, _rss())
            stop.wait(0.0005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(5)


def storescu(port: int, path: Path) -> str:
    proc = subprocess.run([tool("storescu"), "-d", "-aet", "STORESCU", "-aec", "PACS",
                           "127.0.0.1", str(port), str(path)],
                          env=dcmtk_env(), capture_output=True, text=True, errors="replace",
                          timeout=120)
    return proc.stdout + proc.stderr


def test_c_store_below_the_reserve_is_refused_before_receiving(
        tmp_path: Path, dicom_files: DicomFiles) -> None:
    big = dicom_files.big(SIZE)
    archive = tmp_path / "srv" / "archive"
    archive.mkdir(parents=True)
    reserve = {"storage.min_free_bytes": shutil.disk_usage(archive).free + (1 << 30)}

    def current() -> Config:
        return server_config(tmp_path / "srv", {"monitoring.metrics_port": 0, **reserve})

    srv = RunningServer(current(), reload_config=current).start()
    try:
        assert srv.port is not None
        incoming = archive / ".incoming"
        baseline = _rss()
        with watching(incoming) as watch:
            output = storescu(srv.port, big)
        assert "0xa700" in output.lower(), output[-3000:]
        assert watch.seen == set()
        assert watch.peak_rss - baseline < SIZE // 2, (watch.peak_rss - baseline)
        assert "not received: storage.min_free_bytes" in output, output[-3000:]
        assert archived_files(archive) == []
        status, reason = _healthz(srv)
        assert status == 503 and "min_free_bytes" in reason

        reserve["storage.min_free_bytes"] = 0
        assert srv.reload() is True
        with watching(incoming) as watch:
            output = storescu(srv.port, big)
        assert "0xa700" not in output.lower(), output[-3000:]
        assert watch.seen, "the stored transfer went through .incoming unseen"
        assert len(archived_files(archive)) == 1
    finally:
        srv.stop()


def _healthz(srv: RunningServer) -> Any:
    return asyncio.run(http_get(base_url(srv), "/healthz"))
