"""multipart/related responses (RFC 2387, PS3.18 8.7.3.1) written as they are produced:
no preamble before the first boundary, a Content-Type in each part, files copied in
chunks from a worker thread so that a large instance never sits in memory."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import BinaryIO

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

CHUNK = 1 << 20


class MultipartStream:
    """One streamed multipart/related response; `open()` sends the headers."""

    def __init__(self, request: web.Request, part_type: str) -> None:
        self._request = request
        self._boundary = uuid.uuid4().hex
        self.response = web.StreamResponse(status=200)
        self.response.content_type = "multipart/related"
        self.response.headers["Content-Type"] = (
            f'multipart/related; type="{part_type}"; boundary={self._boundary}')
        self.bytes = 0

    async def open(self) -> None:
        self.response.enable_chunked_encoding()
        await self.response.prepare(self._request)

    async def _head(self, content_type: str, location: str = "") -> None:
        head = f"--{self._boundary}\r\nContent-Type: {content_type}\r\n"
        if location:
            head += f"Content-Location: {location}\r\n"
        await self.response.write((head + "\r\n").encode())

    async def part(self, content_type: str, data: bytes, location: str = "") -> None:
        await self._head(content_type, location)
        await self.response.write(data)
        await self.response.write(b"\r\n")
        self.bytes += len(data)

    async def file_part(self, content_type: str, path: Path, location: str = "") -> None:
        """A part copied from `path` chunk by chunk (reads in a worker thread)."""
        fh: BinaryIO = await asyncio.to_thread(open, path, "rb")
        try:
            await self._head(content_type, location)
            while True:
                chunk = await asyncio.to_thread(fh.read, CHUNK)
                if not chunk:
                    break
                await self.response.write(chunk)
                self.bytes += len(chunk)
            await self.response.write(b"\r\n")
        finally:
            await asyncio.to_thread(fh.close)

    async def close(self) -> web.StreamResponse:
        await self.response.write(f"--{self._boundary}--\r\n".encode())
        await self.response.write_eof()
        return self.response

    def abort(self, exc: BaseException) -> web.StreamResponse:
        """After the headers went out no status can say it: cut the connection so the
        client sees an incomplete body, never a short valid one."""
        log.warning("dicomweb.stream_failed", path=self._request.path, error=str(exc))
        transport = self._request.transport
        if transport is not None:
            transport.close()
        return self.response
