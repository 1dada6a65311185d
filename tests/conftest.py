"""Fixtures shared by every test layer; the harness itself is the package tests/support/.

`tests/` is on sys.path (`pythonpath = ["tests"]` in pyproject.toml), so test modules
import the harness as `from support.scu import Scu` and so on (see support/__init__.py).

* `make_cfg`         a Config whose archive and index live in the test's tmp dir
                     (support.config.server_config);
* `start_server`     `srv = await start_server(cfg, **app_kwargs)`: a RunningServer (PacsApp
                     on its own loop, own metrics registry) answering C-ECHO; stopped at
                     teardown. `server` is the default one;
* `scu`              support.scu.Scu;
* `dicom_files`      support.instances.DicomFiles writing into the test's tmp dir;
* `free_port`        factory of ports nobody listens on;
* `dcmtk`            support.dcmtk.Dcmtk; skipped with a reason when a tool is missing, a
                     failure when PACS_REQUIRE_DCMTK=1 (CI). The marker `dcmtk` does the
                     same for tests that do not take the fixture; `dcmtk("findscu", ...)`
                     names the tools a test needs;
* `postgres_cluster` one throw-away PostgreSQL server for the session; `postgres_url` a new
                     empty database on it.
"""

from __future__ import annotations

import asyncio
import compileall
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacs_server.config import Config, DatabaseConfig
from support.config import server_config
from support.dcmtk import BASIC_TOOLS, Dcmtk, put_dcmtk_first_on_path, require_dcmtk
from support.instances import DicomFiles
from support.polling import free_port as pick_free_port
from support.postgres import PostgresCluster, require_postgres
from support.scu import Scu
from support.server import RunningServer, ignore_server_warnings, servers_running

put_dcmtk_first_on_path()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile the package once, before any server process starts.

    With PYTHONDONTWRITEBYTECODE=1 (set on the CI machines) Python never writes the
    .pyc files of the editable src/, so every `python -m pacs_server` the tests start
    (and each of its workers) compiled the whole package again: ~0.3 s of CPU per
    process. The .pyc files are still read when present; an edited module is
    recompiled because its stamp no longer matches.
    """
    import pacs_server
    compileall.compile_dir(Path(pacs_server.__file__).parent, quiet=1)


# --------------------------------------------------------------------------- config

@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., Config]:
    """Factory: `make_cfg({"storage.duplicate_policy": "replace"}, root=tmp_path / "x")`.

    Archive in <root>/archive, index in <root>/pacs.db, port 0 on 127.0.0.1, AE title
    PACS, no log file, no metrics endpoint. `overrides` win (`{"peers": [...]}` too);
    `path` is a YAML file.
    """

    def make(overrides: dict[str, Any] | None = None, *, root: Path | None = None,
             path: str | Path | None = None) -> Config:
        return server_config(root or tmp_path, overrides, path=path)

    return make


# --------------------------------------------------------------------------- server

@pytest.fixture(autouse=True)
def _server_warnings_as_in_production() -> None:
    """A server started by an earlier test (a module-scoped one) is still running: its
    threads see this test's warning filters (see support.server.ignore_server_warnings)."""
    if servers_running():
        ignore_server_warnings()


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Factory: `srv = await start_server(cfg, **app_kwargs)`; all stopped at teardown."""
    servers: list[RunningServer] = []

    async def start(cfg: Config, **app_kwargs: Any) -> RunningServer:
        srv = RunningServer(cfg, **app_kwargs)
        servers.append(srv)
        return await asyncio.to_thread(srv.start)

    yield start
    for srv in reversed(servers):
        await asyncio.to_thread(srv.stop)


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[RunningServer]],
                 make_cfg: Callable[..., Config]) -> RunningServer:
    """A server on 127.0.0.1:<ephemeral> with its own archive and index."""
    return await start_server(make_cfg())


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

def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("dcmtk")
    if marker is not None:
        require_dcmtk(marker.args or BASIC_TOOLS)


@pytest.fixture
def dcmtk() -> Dcmtk:
    require_dcmtk()
    return Dcmtk()


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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseConfig:
    """The index on a tmp SQLite file, then on a new PostgreSQL database."""
    if request.param == "postgresql":
        return DatabaseConfig(url=request.getfixturevalue("postgres_url"))
    return DatabaseConfig(path=str(tmp_path / "index.db"))
