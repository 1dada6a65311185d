"""The supervisor: `pacs_server` with `server.workers` > 1.

One main process for systemd and Docker, and N worker processes (workers/worker.py),
each a full DICOM engine accepting on the same listening socket(s); a new connection
goes to the worker with the fewest live connections (dicom/accept.py). The supervisor:

* binds once per port (port 0 becomes one ephemeral port; a busy port fails the start
  at once); every worker inherits the socket and the first one listening makes it
  listen, so a connection made while a worker restarts waits in the backlog for a
  sibling or the new worker; and keeps the board of live connections per worker
  (`LoadBoard`, dicom/accept.py);
* runs PacsApp in the `supervisor` role: migrations, the start-up reconciliation, the
  incoming sweep and worklist retention (once, not per worker), and the HTTP side, whose
  DICOM side is the `Fleet` of workers;
* answers every worker's admission (admission.py): limits are server-wide;
* starts the workers (PACS_WORKER_INDEX=1..N, own session so a terminal's Ctrl-C
  reaches only the supervisor), says READY=1 to systemd once every worker listens;
* restarts a worker that dies (back-off doubling from RESTART_MIN_S to RESTART_MAX_S
  while it keeps dying within STABLE_S; logged; `pacs_worker_restarts_total`);
* SIGTERM/SIGINT: its copy of the listening sockets closed (with the workers' own,
  closed as they drain, new connections are refused at once); forwarded (a second one
  too: the workers skip their grace period); exits 0 once every worker drained and
  exited 0. SIGHUP: the file is read and checked
  once here; an invalid one is refused (one log line) and no worker is touched, else
  the supervisor applies it and every worker gets SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from pacs_server.config import Config
from pacs_server.errors import ConfigError, StartupError
from pacs_server.systemd import notify

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 120.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 30.0
KILL_AFTER_S = 30.0     # past shutdown_grace: a worker that still has not exited
RUNDIR_PREFIX = "pacs-server-"
EARLY_SIGNALS: list[int] = []      # SIGTERM/SIGINT before the loop's handlers


def remove_stale_rundirs() -> None:
    """Run directories of supervisors that were killed (SIGKILL leaves them behind)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUNDIR_PREFIX}*-*"):
        pid = path.name[len(RUNDIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or path.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def bind_port(host: str, port: int, what: str) -> socket.socket:
    """Bind `host:port`: the one socket every worker accepts on (they make it listen).

    SO_REUSEADDR as upstream's (single process) bind sets it: a restart right after a
    stop is not refused while the old connections linger in TIME_WAIT.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{what} {port} on {host} is already in use") from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"no permission to listen on {host}:{port}") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class Supervisor:
    """Runs the workers of one server; `run()` returns the exit code."""

    def __init__(self, cfg: Config, reload_config: Callable[[], Config],
                 config_path: str | None, overrides: dict[str, Any], rundir: Path) -> None:
        # Imported here, after run_supervisor switched prometheus_client to multiprocess
        # mode: the instruments must be created after that.
        from pacs_server.app import PacsApp, Role
        from pacs_server.dicom.accept import LoadBoard
        from pacs_server.dicom.policy import AssociationPolicy
        from pacs_server.metrics import Metrics
        from pacs_server.workers.admission import AdmissionDesk
        from pacs_server.workers.fleet import Fleet, WorkerState

        self.cfg = cfg
        self._reload_config = reload_config
        self._config_path = config_path
        self._overrides = overrides
        self._rundir = rundir
        self.count = cfg.server.worker_count
        self.metrics = Metrics()
        self.policy = AssociationPolicy(cfg.access_control, cfg.limits,
                                        cfg.server.max_associations, self.metrics)
        self.workers = {i: WorkerState(i, rundir / f"worker-{i}.sock")
                        for i in range(1, self.count + 1)}
        self.board = LoadBoard.create(rundir / "load", self.count)
        fleet = Fleet(self.policy, self.workers)
        self.desk = AdmissionDesk(self.policy, self._hello, fleet.publish,
                                  lambda: fleet.watching)
        self.app = PacsApp(cfg, metrics=self.metrics, role=Role("supervisor", fleet=fleet))
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._ready: dict[int, asyncio.Event] = {i: asyncio.Event() for i in self.workers}
        self._stopping = asyncio.Event()
        self._stop_signals = 0
        self._sockets: dict[str, socket.socket] = {}
        self.port: int | None = None
        self.tls_port: int | None = None

    # ------------------------------------------------------------------ start
    def _bind(self) -> None:
        s = self.cfg.server
        if s.port >= 0:
            self._sockets["plain"] = bind_port(s.host, s.port, "port")
            self.port = self._sockets["plain"].getsockname()[1]
        if self.cfg.tls.enabled:
            self._sockets["tls"] = bind_port(s.host, self.cfg.tls.port, "TLS port")
            self.tls_port = self._sockets["tls"].getsockname()[1]

    def _spec(self, index: int) -> str:
        overrides = {**self._overrides, "monitoring.metrics_port": -1}
        if self.port is not None:
            overrides["server.port"] = self.port
        if self.tls_port is not None:
            overrides["tls.port"] = self.tls_port
        return json.dumps({"index": index, "config": self._config_path, "overrides": overrides,
                           "admission": str(self._rundir / "admission.sock"),
                           "commands": str(self.workers[index].commands),
                           "supervisor": os.getpid(), "load": str(self._rundir / "load"),
                           "slots": self.count,
                           "listen_fds": {k: s.fileno() for k, s in self._sockets.items()}})

    async def _spawn(self, index: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["PACS_WORKER_INDEX"] = str(index)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pacs_server.workers.worker", self._spec(index),
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True,
            pass_fds=[s.fileno() for s in self._sockets.values()])
        self._procs[index] = proc
        self.workers[index].pid = proc.pid
        log.info("worker.spawned", worker=index, pid=proc.pid)

    def _hello(self, index: int, pid: int, services: list[str]) -> None:
        worker = self.workers.get(index)
        if worker is not None and worker.pid == pid:
            worker.ready = True
            worker.services = tuple(services)
            self._ready[index].set()

    def _served(self) -> list[str]:
        """The DICOM services the workers serve, in the order the first one lists them
        (every worker runs the same configuration)."""
        served: list[str] = []
        for worker in self.workers.values():
            served += [name for name in worker.services if name not in served]
        return served

    async def _await_ready(self) -> None:
        """Every worker listening (or a stop requested meanwhile), or StartupError naming
        the first that exited."""
        waits = {i: asyncio.ensure_future(self._ready[i].wait()) for i in self.workers}
        exits = {asyncio.ensure_future(p.wait()): i for i, p in self._procs.items()}
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while not all(w.done() for w in waits.values()):
                    done, _ = await asyncio.wait([*waits.values(), *exits, stop],
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stop.done():
                        return
                    for fut in done:
                        if fut in exits:
                            raise StartupError(f"worker {exits[fut]} exited with code "
                                               f"{fut.result()} while starting")
        except TimeoutError:
            raise StartupError(f"workers not listening after {READY_TIMEOUT_S:g} s") from None
        finally:
            for fut in [*waits.values(), *exits, stop]:
                fut.cancel()

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        from pacs_server.workers.channel import serve

        loop = asyncio.get_running_loop()
        self._bind()
        desk = await serve(self._rundir / "admission.sock", self.desk.handle, self.desk.closed)
        # From the start: a SIGTERM while the workers start stops them too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        for early in EARLY_SIGNALS:
            self._on_stop_signal(early)
        try:
            await self.app.start()
            self.app.port, self.app.tls_port = self.port, self.tls_port
            assert self.app.control is not None
            self.app.control.dicom_port, self.app.control.tls_port = self.port, self.tls_port
            try:
                for index in self.workers:
                    if not self._stopping.is_set():
                        await self._spawn(index)
                await self._await_ready()
            except BaseException:
                await self._stop_workers()
                raise
            if not self._stopping.is_set():
                notify("READY=1")
                await self.app.log_started(services=self._served(), workers=self.count,
                                           worker_pids=[w.pid for w in self.workers.values()])
            watchers = [asyncio.create_task(self._watch(i)) for i in self._procs]
            await self._stopping.wait()
            notify("STOPPING=1")
            self._close_sockets()
            codes = await self._stop_workers()
            for task in watchers:
                task.cancel()
            await self.app.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            desk.close()
            self._close_sockets()
            self.board.close()
        failed = {i: c for i, c in codes.items() if c != 0}
        if failed:
            log.error("workers.unclean_exit", codes=failed)
        log.info("supervisor.stopped", workers=codes)
        return 1 if failed else 0

    def _close_sockets(self) -> None:
        """Close the supervisor's copy of the listening sockets, once stopping.

        Each draining worker closes its own (dicom/accept.py); the last close makes the
        port refuse new connections at once, as one process does when it drains. Kept
        open until then, the supervisor's copy is what makes a connection wait in the
        backlog while every worker restarts (after a crash) rather than be refused.
        """
        for sock in self._sockets.values():
            sock.close()

    async def _watch(self, index: int) -> None:
        """Restart worker `index` whenever it dies, with back-off."""
        from pacs_server.metrics import process_dead

        delay = RESTART_MIN_S
        while True:
            proc = self._procs[index]
            started = time.monotonic()
            code = await proc.wait()
            worker = self.workers[index]
            worker.ready = False
            self.board.absent(index)      # its siblings take every connection meanwhile
            self._ready[index].clear()
            process_dead(proc.pid)
            if self._stopping.is_set():
                return
            delay = RESTART_MIN_S if time.monotonic() - started > STABLE_S else delay
            log.error("worker.died", worker=index, pid=proc.pid, returncode=code,
                      restart_in_s=delay)
            self.metrics.worker_restarts.inc()
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            if self._stopping.is_set():      # set as the timeout fired: sockets closed
                return
            delay = min(delay * 2, RESTART_MAX_S)
            await self._spawn(index)

    # ------------------------------------------------------------------ signals
    def _on_stop_signal(self, sig: int) -> None:
        self._stop_signals += 1
        log.info("server.stopping", signal=signal.Signals(sig).name,
                 forced=self._stop_signals > 1)
        if self._stop_signals > 1:
            self._signal_workers(signal.SIGTERM)    # a second one: no grace period
        self._stopping.set()

    async def _stop_workers(self) -> dict[int, int]:
        """SIGTERM every worker, wait for all of them (SIGKILL past the grace).

        A worker still starting is signalled once it has reported (or exited): before
        its handlers exist a SIGTERM would kill it instead of stopping it.
        """
        starting = [i for i, p in self._procs.items()
                    if p.returncode is None and not self.workers[i].ready]
        if starting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(
                    *(self._started_or_exited(i) for i in starting)), READY_TIMEOUT_S)
        self._signal_workers(signal.SIGTERM)
        codes: dict[int, int] = {}
        limit = self.cfg.server.shutdown_grace + KILL_AFTER_S
        for index, proc in self._procs.items():
            try:
                codes[index] = await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                log.error("worker.killed", worker=index, pid=proc.pid)
                proc.kill()
                codes[index] = await proc.wait()
        return codes

    async def _started_or_exited(self, index: int) -> None:
        ready = asyncio.ensure_future(self._ready[index].wait())
        exited = asyncio.ensure_future(self._procs[index].wait())
        try:
            await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()

    def _signal_workers(self, sig: int) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _on_hangup(self) -> None:
        """SIGHUP: check the file once; if it is valid apply it here, then in every worker."""
        if self.app.control is None:
            log.info("config.reload_unavailable", reason="starting")
            return
        try:
            new = self._reload_config()
        except ConfigError as exc:
            log.error("config.reload_rejected", error=str(exc), workers_untouched=True)
            return
        self.app.hangup(new)
        self._signal_workers(signal.SIGHUP)
        log.info("workers.reload_sent", workers=[i for i, p in self._procs.items()
                                                  if p.returncode is None])


def run_supervisor(cfg: Config, reload_config: Callable[[], Config], config_path: str | None,
                   overrides: dict[str, Any]) -> int:
    """Set up the run directory and metrics files, then run the supervisor."""
    # Until the loop's handlers are in place, a stop request is remembered, not fatal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: EARLY_SIGNALS.append(signum))
    remove_stale_rundirs()
    rundir = Path(tempfile.mkdtemp(prefix=f"{RUNDIR_PREFIX}{os.getpid()}-"))
    try:
        metrics_dir = rundir / "metrics"
        metrics_dir.mkdir()
        # Before any instrument exists, in this process and (inherited) every worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        return asyncio.run(_main(cfg, reload_config, config_path, overrides, rundir))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


async def _main(cfg: Config, reload_config: Callable[[], Config], config_path: str | None,
                overrides: dict[str, Any], rundir: Path) -> int:
    return await Supervisor(cfg, reload_config, config_path, overrides, rundir).run()
