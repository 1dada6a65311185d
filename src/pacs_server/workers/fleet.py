"""The workers as the supervisor's HTTP side sees them: control.py's `DicomSide`.

/status, `pacsctl associations`, `disconnect` and the admin API's AE titles and peers
reach every worker over its command socket (workers/channel.py). Association ids are
"<worker>-<n>": association n of worker <worker> (PACS_WORKER_INDEX, from 1). Pause,
resume and every admission decision are the supervisor's own policy (admission.py), so
they need no message. The workers forward their association events only while the live
feed has a watcher (`watched`): unwatched, that forwarding and its decoding here cost
the supervisor CPU on every instance stored (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pacs_server.dicom.policy import AssociationPolicy
from pacs_server.workers.channel import ChannelError, ask

log = structlog.get_logger(__name__)

_ID = re.compile(r"^(\d+)-(\d+)$")


@dataclass
class WorkerState:
    """What the supervisor knows of one worker slot (restarts keep the slot)."""

    index: int
    commands: Path
    pid: int = 0
    ready: bool = False
    services: tuple[str, ...] = ()


class Fleet:
    """Every worker, through its command socket; unreachable workers are left out."""

    def __init__(self, policy: AssociationPolicy, workers: dict[int, WorkerState]) -> None:
        self.policy = policy
        self._workers = workers
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # (generation, on): a worker applies a newer generation only, so the answer to
        # its hello and a broadcast that crossed it cannot leave it in the older state.
        self.watching: tuple[int, bool] = (0, False)
        self._watch_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest: asyncio.Task[None] | None = None    # the last watching broadcast

    @property
    def listening(self) -> bool:
        return any(w.ready for w in self._workers.values())

    async def _each(self, request: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        ready = [w for w in self._workers.values() if w.ready]
        replies = await asyncio.gather(*(ask(w.commands, request) for w in ready),
                                       return_exceptions=True)
        out = []
        for w, reply in zip(ready, replies, strict=True):
            if isinstance(reply, ChannelError):
                log.warning("worker.unreachable", worker=w.index, error=str(reply))
            elif isinstance(reply, BaseException):
                raise reply
            elif "error" not in reply:
                out.append((w.index, reply))
        return out

    async def snapshot(self) -> list[dict[str, Any]]:
        rows = [_tagged(i, a) for i, reply in await self._each({"op": "status"})
                for a in reply["associations"]]
        return sorted(rows, key=lambda a: a["since"])

    async def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _i, reply in await self._each({"op": "status"}):
            for key, value in reply["totals"].items():
                out[key] = out.get(key, 0) + int(value)
        out.setdefault("instances_stored", 0)
        return out

    async def _one(self, assoc_id: str, request: dict[str, Any]) -> dict[str, Any] | None:
        match = _ID.match(assoc_id)
        worker = self._workers.get(int(match.group(1))) if match else None
        if match is None or worker is None or not worker.ready:
            return None
        try:
            reply = await ask(worker.commands, {**request, "id": int(match.group(2))})
        except ChannelError as exc:
            log.warning("worker.unreachable", worker=worker.index, error=str(exc))
            return None
        return reply

    async def detail(self, assoc_id: str) -> dict[str, Any] | None:
        reply = await self._one(assoc_id, {"op": "detail"})
        found = reply.get("association") if reply else None
        return _tagged(int(assoc_id.split("-")[0]), found) if found else None

    async def abort(self, assoc_id: str) -> bool:
        reply = await self._one(assoc_id, {"op": "abort"})
        return bool(reply and reply.get("aborted"))

    async def access_changed(self) -> None:
        """The admin API changed AE titles or peers: every worker re-reads them."""
        await self._each({"op": "refresh_access"})

    def watched(self, on: bool) -> None:
        """The live feed's first watcher came or its last one went: tell every worker."""
        self.watching = (self.watching[0] + 1, on)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:     # a feed closed at exit, outside the loop: nobody to tell
            return
        task = loop.create_task(self._send_watching())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._latest = task

    async def watch_settled(self) -> None:
        """Once the latest broadcast is answered by every ready worker (an unreachable
        one is left out after the channel's time limit): a feed that starts writing
        only then misses none of their events."""
        if self._latest is not None:
            await asyncio.shield(self._latest)

    async def _send_watching(self) -> None:
        async with self._watch_lock:        # the latest state, sent in order
            generation, on = self.watching
            await self._each({"op": "watch", "generation": generation, "on": on})

    def listen(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call `listener(kind, fields)` with every worker's association events (the
        supervisor's live feed); ids as in `snapshot`."""
        self._listeners.append(listener)

    def publish(self, worker: int, events: list[Any]) -> None:
        """Events a worker forwarded (workers/worker.py EventForwarder)."""
        for kind, fields in events:
            if "assoc" in fields:
                fields["assoc"] = f"{worker}-{fields['assoc']}"
            fields["worker"] = worker
            for listener in self._listeners:
                listener(str(kind), fields)


def _tagged(worker: int, assoc: dict[str, Any]) -> dict[str, Any]:
    return {**assoc, "id": f"{worker}-{assoc['id']}", "worker": worker}
