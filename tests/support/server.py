"""The one server harness: a PacsApp on its own event loop in a daemon thread.

The server's association threads cross into that loop through its LoopBridge, so the
loop must never wait on a test: a test (sync or async) and the dcmtk processes it runs
can block as long as they like. Each server gets a fresh metrics registry, so samples
read from `RunningServer.metrics` are this server's alone.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import warnings
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pacs_server.app import PacsApp
from pacs_server.config import Config
from pacs_server.metrics import Metrics
from support.polling import wait_until
from support.scu import wait_until_responds

_running: set[RunningServer] = set()


def ignore_server_warnings() -> None:
    """Let pydicom's and pynetdicom's warnings be logged, not raised, as in production.

    pytest's `filterwarnings = error` is process-wide, so a warning in an association
    thread would otherwise become an exception inside the server and change what it
    answers. pytest restores the filters after each test; tests/conftest.py calls this
    again for every test that runs while a server is up.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    warnings.filterwarnings("ignore", category=UserWarning, module="pynetdicom")


def servers_running() -> bool:
    """True while some RunningServer of this process is started and not yet stopped."""
    return bool(_running)


class RunningServer:
    """PacsApp on its own loop; `start()` returns once the server answers a C-ECHO.

    `app_kwargs` go to PacsApp (e.g. `reload_config=`). Every method blocks. Tests look
    at what the server does through `port`, `tls_port`, `http_port`, `archive`, `db`,
    `sample()` and the logs, never at the app's attributes (which the app is free to
    change). With the plain listener off (`server.port: -1`) `port` is None and `start()`
    does not probe.
    """

    def __init__(self, cfg: Config, **app_kwargs: Any) -> None:
        self.cfg = cfg
        self.metrics = Metrics(CollectorRegistry())
        self._app = PacsApp(cfg, metrics=self.metrics, **app_kwargs)
        self.port: int | None = 0
        self.http_port: int | None = None    # the HTTP side (/metrics, /status, /api)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="server-loop",
                                        daemon=True)
        self._saved_tempdir: str | None = None
        self._started = False

    @property
    def archive(self) -> Path:
        """The archive root (storage.directory)."""
        return Path(self.cfg.storage.directory)

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port (None unless tls.enabled)."""
        return self._app.tls_port

    @property
    def db(self) -> Path:
        """The SQLite index file (database.path; meaningless with database.url)."""
        return Path(self.cfg.database.path)

    def sample(self, name: str, **labels: str) -> float | None:
        """A sample of this server's own metrics registry (None if never observed)."""
        return self.metrics.registry.get_sample_value(name, labels)

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> RunningServer:
        ignore_server_warnings()
        # DicomServer.start() points the process-wide tempfile.tempdir at the archive's
        # .incoming (pynetdicom buffers received datasets there); `stop()` gives it back.
        self._saved_tempdir = tempfile.tempdir
        self._thread.start()
        _running.add(self)
        self._started = True
        try:
            self._run(self._app.start())
            self.http_port = self._app.metrics_port
            if self.cfg.server.port < 0:
                self.port = self._app.port   # None: the test talks TLS to `tls_port`
            else:
                assert self._app.port
                self.port = int(self._app.port)
                wait_until_responds(self.port, called=self.cfg.server.ae_title)
                self._wait_closed()
        except BaseException:
            self.stop()      # a server that failed to start leaves no loop thread behind
            raise
        return self

    def _wait_closed(self, timeout: float = 10.0) -> None:
        """Until every accepted association (the readiness probe's) has closed and logged
        it, so a test's log capture starts with none of the probe's lines."""
        dicom = self._app.dicom
        assert dicom is not None

        def closed() -> bool:
            t = dicom.tracker.totals()
            return t["accepted"] <= t["released"] + t["aborted"]

        wait_until(closed, timeout, "the readiness probe's association to close")

    def reload(self) -> bool:
        """SIGHUP's work (PacsApp.reload), on the server's loop as a signal handler runs."""

        async def reload() -> bool:
            return self._app.reload()

        return bool(self._run(reload()))

    def stop(self) -> None:
        """Stop the app (drain, close the index), then the loop; safe to call twice."""
        if not self._started:
            return
        self._started = False
        try:
            self._run(self._app.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            _running.discard(self)
            tempfile.tempdir = self._saved_tempdir
