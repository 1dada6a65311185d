"""Fixtures shared by every test layer (helpers: tests/pacs_testing.py).

* `make_cfg`       a Config whose archive and index live in the test's tmp dir;
* `start_server`   runs PacsApp in-process on 127.0.0.1:0 with its own metrics registry,
                   waits for a C-ECHO, stops it at teardown; `server` is the default one;
* `scu`            pynetdicom SCU helper (pacs_testing.Scu);
* `dicom_files`    DICOM files for the test (pacs_testing.DicomFiles);
* `free_port`      factory of ports nobody listens on;
* `dcmtk`          the dcmtk tools and their environment; skipped with a reason when a
                   tool is missing, a failure when PACS_REQUIRE_DCMTK=1 (CI). The `dcmtk`
                   marker does the same for tests that do not take the fixture.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pacs_testing import (
    SERVER_AE,
    DicomFiles,
    PostgresCluster,
    Scu,
    dcmtk_path,
    pick_free_port,
    require_postgres,
    wait_until_responds,
)
from pacs_testing import require_dcmtk as require_dcmtk_tools
from prometheus_client import CollectorRegistry
from qr_helpers import start_qr_server  # noqa: F401  (fixture, shared by the Q/R test modules)

from pacs_server.app import PacsApp
from pacs_server.config import Config, load_config
from pacs_server.metrics import Metrics

DCMTK_TOOLS = ("echoscu", "storescu", "dcmdump")


# --------------------------------------------------------------------------- config

@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., Config]:
    """Factory: `make_cfg({"storage.duplicate_policy": "replace"}, root=tmp_path / "x")`.

    Archive in <root>/archive, index in <root>/pacs.db, port 0 on 127.0.0.1, AE title
    PACS, no log file, no metrics endpoint. `overrides` win; `path` is a YAML file.
    """

    def make(overrides: dict[str, Any] | None = None, *, root: Path | None = None,
             path: str | Path | None = None) -> Config:
        base = root or tmp_path
        values: dict[str, Any] = {
            "server.port": 0,
            "server.host": "127.0.0.1",
            "server.ae_title": SERVER_AE,
            "storage.directory": str(base / "archive"),
            "database.path": str(base / "pacs.db"),
            "logging.file": "",
            "monitoring.metrics_port": -1,
        }
        values.update(overrides or {})
        return load_config(path, values)

    return make


# --------------------------------------------------------------------------- PostgreSQL

@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL server for the session (skipped, or failed when
    PACS_REQUIRE_POSTGRES=1, if PostgreSQL or asyncpg is missing)."""
    cluster = PostgresCluster(require_postgres())
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_cluster.create_database()


# --------------------------------------------------------------------------- server

@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    """Factory: `app = await start_server(cfg)`; every app started is stopped at teardown.

    The server runs with pydicom's (and pynetdicom's) warnings at their production
    behaviour, logged rather than raised: pytest's `filterwarnings = error` is
    process-wide, so a warning in an association thread would otherwise become an
    exception inside the server and change what it answers.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    warnings.filterwarnings("ignore", category=UserWarning, module="pynetdicom")
    # DicomServer.start() points the process-wide tempfile.tempdir at the archive's
    # .incoming (pynetdicom buffers received datasets there); give it back afterwards.
    saved_tempdir = tempfile.tempdir
    apps: list[PacsApp] = []

    async def start(cfg: Config, **kwargs: Any) -> PacsApp:
        app = PacsApp(cfg, metrics=Metrics(CollectorRegistry()), **kwargs)
        apps.append(app)
        await app.start()
        assert app.port
        await asyncio.to_thread(wait_until_responds, app.port, called=cfg.server.ae_title)
        return app

    yield start
    try:
        for app in reversed(apps):
            if app.dicom is not None or app.repo is not None:
                await app.stop()
    finally:
        tempfile.tempdir = saved_tempdir


@pytest.fixture
async def server(start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> PacsApp:
    """A PacsApp on 127.0.0.1:<ephemeral> with its own archive and index."""
    app: PacsApp = await start_server(make_cfg())
    return app


@pytest.fixture
def scu() -> Scu:
    return Scu()


@pytest.fixture
def dicom_files(tmp_path: Path) -> DicomFiles:
    return DicomFiles(tmp_path / "send")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Factory returning a TCP port on 127.0.0.1 that nothing listens on right now."""
    return pick_free_port


# --------------------------------------------------------------------------- dcmtk

def _put_dcmtk_first_on_path() -> None:
    """pynetdicom installs console scripts named like dcmtk's (echoscu, storescu, ...)
    into the virtualenv; with an activated venv they would shadow dcmtk. Put the
    directory of the real dcmtk first on PATH, for the tests that call tools by name."""
    echoscu = dcmtk_path("echoscu")
    if echoscu is not None:
        os.environ["PATH"] = str(Path(echoscu).parent) + os.pathsep + os.environ["PATH"]


_put_dcmtk_first_on_path()


def require_dcmtk(tools: tuple[str, ...] = DCMTK_TOOLS) -> None:
    """Skip (naming the missing tools) unless PACS_REQUIRE_DCMTK=1, then fail."""
    require_dcmtk_tools(tools)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("dcmtk") is not None:
        require_dcmtk()


@dataclass
class Dcmtk:
    """The dcmtk tools and the environment to run them in."""

    env: dict[str, str]

    def tool(self, name: str) -> str:
        path = dcmtk_path(name)
        assert path is not None, f"dcmtk {name} not on PATH"
        return path


@pytest.fixture
def dcmtk() -> Dcmtk:
    require_dcmtk()
    # Debian's dcmtk keeps Nagle on unless told otherwise: ~40 ms stall per DIMSE message.
    return Dcmtk(env={**os.environ, "TCP_NODELAY": "1"})
