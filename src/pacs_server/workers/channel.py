"""The control channel between the supervisor and its workers: JSON lines over Unix sockets.

Every exchange is one request and one reply, each a JSON object on one line (a request
with `"noreply": true` gets none: `Channel.tell`, for what needs no answer). `serve()`
answers on an asyncio loop (the supervisor's admission desk, each worker's command
socket) with a per-connection `session` dict the handler may keep state in;
`on_close(session)` runs when the peer goes away (a dead worker gives back its slots).
`Channel` is the blocking client of pynetdicom's threads (one connection, its calls
pipelined); `ask()` the loop's client, one connection per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any], dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]
LINE_LIMIT = 16 * 1024 * 1024     # a /status of many associations fits


class ChannelError(Exception):
    """The other end did not answer (gone, or too slow)."""


async def serve(path: Path, handle: Handler,
                on_close: Callable[[dict[str, Any]], None] | None = None) -> asyncio.Server:
    """Listen on the Unix socket `path` (owner-only) and answer each line with `handle`."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state: dict[str, Any] = {}
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    reply = handle(request, state)
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception as exc:  # one bad request must not end the channel
                    log.exception("channel.request_failed", path=str(path))
                    reply = {"error": str(exc) or type(exc).__name__}
                if isinstance(request, dict) and request.get("noreply"):
                    continue
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            if on_close is not None:
                on_close(state)
            writer.close()

    server = await asyncio.start_unix_server(session, path=str(path), limit=LINE_LIMIT)
    os.chmod(path, 0o600)  # noqa: ASYNC240 - one system call on a socket file
    return server


async def ask(path: Path, request: dict[str, Any], limit_s: float = 5.0) -> dict[str, Any]:
    """One request to the socket at `path` and its reply; ChannelError if none comes."""
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise ChannelError(f"{path.name}: {exc or type(exc).__name__}") from None
    if not line:
        raise ChannelError(f"{path.name}: closed without an answer")
    reply: dict[str, Any] = json.loads(line)
    return reply


class _Pending:
    """One call's reply, handed over by whichever caller reads the connection."""

    __slots__ = ("done", "line")

    def __init__(self) -> None:
        self.done = False
        self.line = b""           # empty: the connection ended first


class Channel:
    """A blocking client: one connection, reconnected after a failure; thread-safe.

    Calls from several threads are pipelined: each sends its line under the lock and
    waits for its own reply, which `serve()` sends in request order (it answers a
    connection's lines one after the other). One waiting caller at a time reads the
    connection and hands each reply to the call it answers; a lone caller thus reads
    its own, with no thread in between. With the lock held for the whole round trip
    instead, 4 threads asking at once waited for each other's (docs/performance.md,
    "Results: workers (2026-12-02)", scripts/bench/admission_cost.py).
    """

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._reading = False      # a caller is reading replies for everyone

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send `request` and wait for its reply."""
        pending = _Pending()
        self._send(request, pending)
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while not pending.done and self._reading:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChannelError(f"{self._path.name}: no answer in {self._timeout:g} s")
                self._cond.wait(left)
            lead = not pending.done
            if lead:
                self._reading = True
                file = self._file
        if lead:
            self._read_until(pending, file)
        if not pending.line:
            raise ChannelError(f"{self._path.name}: closed")
        reply: dict[str, Any] = json.loads(pending.line)
        return reply

    def tell(self, request: dict[str, Any]) -> None:
        """Send `request` without waiting: the other side answers nothing."""
        self._send({**request, "noreply": True}, None)

    def _send(self, request: dict[str, Any], pending: _Pending | None) -> None:
        data = json.dumps(request, default=str).encode() + b"\n"
        with self._cond:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self._timeout)   # a silent peer: the reader gives up
                    sock.connect(str(self._path))
                    self._sock, self._file = sock, sock.makefile("rb")
                if pending is not None:
                    self._waiting.append(pending)
                self._sock.sendall(data)
            except OSError as exc:
                self._drop()
                raise ChannelError(f"{self._path.name}: {exc}") from None

    def _read_until(self, pending: _Pending, file: Any) -> None:
        """Read replies, each to the oldest waiting call, until `pending` has its own."""
        try:
            while not pending.done:
                try:
                    line = file.readline(LINE_LIMIT) if file is not None else b""
                except (OSError, ValueError):
                    line = b""
                with self._cond:
                    if self._file is not file:        # dropped meanwhile: all failed
                        break
                    if not line:
                        self._drop()
                        break
                    if self._waiting:
                        answered = self._waiting.popleft()
                        answered.line, answered.done = line, True
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()       # another waiting call reads next

    def _drop(self) -> None:
        """Close the connection (the lock held); its waiting calls fail."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)     # wakes a blocked reader
            self._file.close()
            self._sock.close()
        self._sock = self._file = None
        while self._waiting:
            self._waiting.popleft().done = True
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._drop()
