"""The control channel between the supervisor and its workers: JSON lines over Unix sockets.

Every exchange is one request and one reply, each a JSON object on one line (a request
with `"noreply": true` gets none: `Channel.tell`, for what needs no answer). `serve()`
answers on an asyncio loop (the supervisor's admission desk, each worker's command
socket) with a per-connection `session` dict the handler may keep state in;
`on_close(session)` runs when the peer goes away (a dead worker gives back its slots).
`Channel` is the blocking client of pynetdicom's threads (one connection, one request
at a time); `ask()` the loop's client, one connection per request.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import threading
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


class Channel:
    """A blocking client: one connection, reconnected after a failure; thread-safe."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._file: Any = None

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send `request` and wait for its reply."""
        line = self._exchange(request, reply=True)
        if not line:
            raise ChannelError(f"{self._path.name}: closed")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def tell(self, request: dict[str, Any]) -> None:
        """Send `request` without waiting: the other side answers nothing."""
        self._exchange({**request, "noreply": True}, reply=False)

    def _exchange(self, request: dict[str, Any], reply: bool) -> bytes:
        data = json.dumps(request, default=str).encode() + b"\n"
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self._timeout)
                    sock.connect(str(self._path))
                    self._sock, self._file = sock, sock.makefile("rb")
                self._sock.sendall(data)
                line: bytes = self._file.readline(LINE_LIMIT) if reply else b"-"
            except OSError as exc:
                self._drop()
                raise ChannelError(f"{self._path.name}: {exc}") from None
            if not line:
                self._drop()
            return line

    def _drop(self) -> None:
        if self._sock is not None:
            self._file.close()
            self._sock.close()
        self._sock = self._file = None

    def close(self) -> None:
        with self._lock:
            self._drop()
