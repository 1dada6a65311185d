"""One worker process: `python -m pacs_server.workers.worker '<spec as JSON>'`.

Started by the supervisor (workers/supervisor.py), never by hand. A full DICOM engine
(PacsApp in the `worker` role: own loop, own index writer) accepting on the
supervisor's listening socket(s) (dicom/accept.py),
with admission answered by the supervisor, and a command socket on which the
supervisor asks for its associations, aborts one, or has it re-read the admin API's
AE titles and peers. SIGTERM drains as the single process does, SIGHUP reloads (the
supervisor validated the file first). A worker whose supervisor is gone stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any, cast

import structlog

from pacs_server.app import PacsApp, Role
from pacs_server.config import Config, load_config
from pacs_server.control import store_totals
from pacs_server.dicom.accept import LoadBoard, SharedListen
from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.errors import ConfigError, ExitCode, StartupError
from pacs_server.logging import configure_logging
from pacs_server.workers.admission import RemotePolicy
from pacs_server.workers.channel import Channel, ChannelError, serve

log = structlog.get_logger("pacs_server.workers.worker")

ORPHAN_CHECK_S = 1.0
EVENT_QUEUE = 10_000
EVENT_BATCH = 200


class EventForwarder:
    """A tracker listener sending association events to the supervisor's live feed.

    Only while the feed has a watcher (`watch`, from the supervisor); otherwise an
    event costs one attribute test. pynetdicom's threads only queue (dropping when the
    supervisor does not keep up); one thread sends them in batches, without waiting.
    """

    def __init__(self, path: Path, worker: int) -> None:
        self._channel = Channel(path)
        self._worker = worker
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(EVENT_QUEUE)
        self.watched = False
        self._generation = -1
        self._thread = threading.Thread(target=self._run, name="event-forwarder", daemon=True)
        self._thread.start()

    def watch(self, generation: int, on: bool) -> None:
        """The supervisor's watching state; an older generation than the last is stale."""
        if generation > self._generation:
            self._generation, self.watched = generation, on

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if not self.watched:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((kind, fields))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch = [item]
            while len(batch) < EVENT_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self._channel.tell({"op": "events", "worker": self._worker,
                                    "events": batch})
            except ChannelError:
                pass          # the live feed misses them; the audit log has them

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
        self._channel.close()


class Commands:
    """The supervisor's requests to this worker (its command socket)."""

    def __init__(self, app: PacsApp, events: EventForwarder) -> None:
        self._app = app
        self._events = events

    async def handle(self, req: dict[str, Any], _session: dict[str, Any]) -> dict[str, Any]:
        app, op = self._app, req.get("op")
        dicom, control = app.dicom, app.control
        if dicom is None or control is None or app.archive is None:
            return {"error": "not serving"}
        if op == "status":
            return {"associations": dicom.tracker.snapshot(), "listening": dicom.listening,
                    "watched": self._events.watched,
                    "totals": {**dicom.tracker.totals(), **store_totals(app.archive)}}
        if op == "detail":
            return {"association": dicom.tracker.detail(int(req["id"]))}
        if op == "abort":
            # abort() blocks ~0.1 s (pynetdicom's A-ABORT send): off the loop.
            return {"aborted": await asyncio.to_thread(dicom.tracker.abort,
                                                       int(req["id"]))}
        if op == "refresh_access":
            await control.load()
            return {}
        if op == "watch":
            self._events.watch(int(req["generation"]), bool(req["on"]))
            return {}
        return {"error": f"unknown operation {op!r}"}


async def run_worker(cfg: Config, spec: dict[str, Any]) -> None:
    index = int(spec["index"])
    channel = Channel(Path(spec["admission"]))
    policy = RemotePolicy(channel)
    events = EventForwarder(Path(spec["admission"]), index)
    board = LoadBoard(Path(spec["load"]), int(spec["slots"]), own=index)
    listen = SharedListen(board, {k: int(v) for k, v in spec["listen_fds"].items()})
    app = PacsApp(cfg, reload_config=lambda: load_config(spec["config"], spec["overrides"]),
                  # RemotePolicy has AssociationPolicy's interface (workers/admission.py)
                  role=Role("worker", policy=cast(AssociationPolicy, policy), events=events,
                            listen=listen))
    # The supervisor's PID from the spec, not getppid() here: a supervisor killed while
    # this worker was still importing has already left it to init, and getppid() would
    # then name init as the parent to watch, for ever.
    parent = int(spec.get("supervisor") or os.getppid())

    async def started() -> None:
        commands = Path(spec["commands"])
        await asyncio.to_thread(commands.unlink, missing_ok=True)
        server = await serve(commands, Commands(app, events).handle)
        app.on_close(server.close)
        log.info("worker.started", worker=index, pid=os.getpid(), port=app.port,
                 tls_port=app.tls_port)
        events.watch(*await asyncio.to_thread(policy.hello, index, os.getpid(),
                                              app.services))

    async def watch_parent() -> None:
        # No event to wait on: a reparented process only notices through getppid().
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(ORPHAN_CHECK_S)
        log.error("worker.supervisor_gone", worker=index)
        app.request_stop()

    # From the start: a supervisor killed, or its SIGTERM, while this worker starts
    # (PacsApp.run installs its own handlers once the server is up).
    watcher = asyncio.create_task(watch_parent())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: loop.call_soon_threadsafe(app.request_stop))
    try:
        await app.run(started)
    finally:
        watcher.cancel()
        events.close()
        channel.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    try:
        cfg = load_config(spec["config"], spec["overrides"])
    except ConfigError as exc:
        print(f"pacs_server worker: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        configure_logging(cfg.logging)
        asyncio.run(run_worker(cfg, spec))
    except StartupError as exc:
        print(f"pacs_server worker {spec['index']}: {exc}", file=sys.stderr)
        return ExitCode.STARTUP
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
