"""A throw-away PostgreSQL server for the session (the `postgres_cluster` fixture)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from support.polling import free_port


def _postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live: Debian's versioned directory, else PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    """The PostgreSQL server binaries and the asyncpg driver, or skip (naming what is
    missing) unless PACS_REQUIRE_POSTGRES=1, then fail."""
    missing = []
    bindir = _postgres_bindir()
    if bindir is None:
        missing.append("PostgreSQL server (initdb, pg_ctl)")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing.append("the asyncpg driver")
    if bindir is not None and not missing:
        return bindir
    message = f"not found: {', '.join(missing)}"
    if os.environ.get("PACS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (PACS_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(f"{message}; install postgresql and asyncpg or set PACS_REQUIRE_POSTGRES=1 "
                "to make this fail")


class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1 and a free port, in a temporary
    directory; stopped (by pg_ctl, which knows its PID) and removed by `stop()`.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres`
    account that Debian's package creates.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # Not tempfile's default directory: a running server points that at its archive,
        # and pytest's are private to root, which the postgres account cannot enter.
        self.dir = Path(tempfile.mkdtemp(prefix="pacs-pg-",
                                         dir=os.environ.get("TMPDIR", "/tmp")))
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as, str(self.bindir / tool), *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip()[-500:]}")

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", options, "-w", action, *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """Restart the server: every open connection is cut."""
        self._pg_ctl("restart", "-m", "fast")

    def halt(self) -> None:
        """Stop the server, keeping the cluster: `start()` brings it back."""
        self._pg_ctl("stop", "-m", "fast")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"pacs_{uuid.uuid4().hex[:12]}"
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"
