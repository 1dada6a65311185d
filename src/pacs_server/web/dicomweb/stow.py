"""STOW-RS handler (PS3.18 10.5): `POST studies` and `POST studies/{uid}`.

The body is read as a stream (aiohttp's MultipartReader), each part chunk by chunk into
a file in the archive's `.incoming` directory, so a 1 GB instance costs one chunk of
memory, like C-STORE. Every part then goes through the C-STORE path
(`services/dicomweb_store.py`). A client that stops sending for `dicomweb.read_timeout`
seconds is answered 408 and nothing of its request is kept.

Response (PS3.18 10.5.3, Table 10.5.3-1): 200 all stored; 202 some stored, some failed;
409 none stored (an unsupported SOP class, another study on `studies/{uid}`, a
duplicate, out of resources); 400 none stored and no part was DICOM; 413 a body above
`dicomweb.max_request_bytes`; 415 not `multipart/related; type="application/dicom"`.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from aiohttp import BodyPartReader, MultipartReader, web

from pacs_server.errors import (
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    UnsupportedMediaType,
)
from pacs_server.services.dicomweb import DicomWeb, PartResult
from pacs_server.services.dicomweb_store import CANNOT_UNDERSTAND
from pacs_server.web.dicomweb.accept import parse_media
from pacs_server.web.dicomweb.dicomjson import element, json_response, retrieve_url
from pacs_server.web.dicomweb.wado import path_uids

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
STORE_CONCURRENCY = 4        # parts stored at once (and kept in .incoming meanwhile)
SOURCE_AE = "DICOMWEB"       # the Source AE Title of STOW-RS instances (an AE: 16 chars)


def _check_content_type(request: web.Request) -> None:
    media = parse_media(request.headers.get("Content-Type", ""))
    kind = media.param("type").lower()
    if media.mime != "multipart/related" or kind not in ("application/dicom", ""):
        raise UnsupportedMediaType(
            'STOW-RS takes multipart/related; type="application/dicom", not '
            f"{request.headers.get('Content-Type', '(none)')!r}")
    if not media.param("boundary"):
        raise InvalidRequest("multipart/related without a boundary parameter")


async def store(request: web.Request, backend: DicomWeb) -> web.Response:
    cfg = backend.config()
    _check_content_type(request)
    study = path_uids(request).get("StudyInstanceUID", "")
    length = request.content_length
    if length is not None and length > cfg.max_request_bytes:
        raise RequestTooLarge(f"request body of {length} bytes is above "
                              f"dicomweb.max_request_bytes ({cfg.max_request_bytes})")
    reader = MultipartReader(request.headers, request.content)
    outcomes: list[PartResult | asyncio.Task[PartResult]] = []
    slots = asyncio.Semaphore(STORE_CONCURRENCY)
    received = 0

    async def store_one(path: Path) -> PartResult:
        try:
            return await backend.store(path, study, SOURCE_AE)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            slots.release()

    try:
        while True:
            part = await _timed(reader.next(), cfg.read_timeout, "next part")
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart bodies are not supported")
            kind = parse_media(part.headers.get("Content-Type", "application/dicom")).mime
            path = backend.incoming / f"stow-{uuid.uuid4().hex}.dcm"
            await slots.acquire()
            try:
                received += await _save(part, path, cfg.read_timeout,
                                        cfg.max_request_bytes - received)
            except BaseException:
                await asyncio.to_thread(path.unlink, missing_ok=True)
                slots.release()
                raise
            if kind != "application/dicom":
                await asyncio.to_thread(path.unlink, missing_ok=True)
                slots.release()
                outcomes.append(PartResult("", "", failure=CANNOT_UNDERSTAND,
                                           reason=f"part of type {kind!r}, not "
                                                  "application/dicom"))
                continue
            # Stored while the next part arrives: the index commits them together.
            outcomes.append(asyncio.create_task(store_one(path)))
    except BaseException:
        # Parts already handed over finish (a store in a thread cannot be stopped).
        await asyncio.gather(*(o for o in outcomes if isinstance(o, asyncio.Task)),
                             return_exceptions=True)
        raise
    results = [o if isinstance(o, PartResult) else await o for o in outcomes]
    if not results:
        raise InvalidRequest("the multipart body has no parts")
    return _response(request, results, study)


async def _timed(step: Any, seconds: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise RequestTimeout(f"no data for {seconds:g} s while reading the {what}") from None
    except ValueError as exc:     # aiohttp's complaints about a malformed multipart body
        raise InvalidRequest(f"malformed multipart body: {exc}") from None


async def _save(part: BodyPartReader, path: Path, seconds: float, room: int) -> int:
    """Copy one part to `path`; its size."""
    fh: BinaryIO = await asyncio.to_thread(open, path, "xb")
    size = 0
    try:
        while True:
            chunk = await _timed(part.read_chunk(CHUNK), seconds, "body")
            if not chunk:
                return size
            size += len(chunk)
            if size > room:
                raise RequestTooLarge("request body is above dicomweb.max_request_bytes")
            await asyncio.to_thread(fh.write, chunk)
    finally:
        await asyncio.to_thread(fh.close)


def _response(request: web.Request, results: list[PartResult], study: str) -> web.Response:
    stored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    payload: dict[str, Any] = {}
    studies = {r.study_uid for r in stored}
    if study or len(studies) == 1:
        payload["00081190"] = element("UR", retrieve_url(request, study or studies.pop()))
    if stored:
        payload["00081199"] = element("SQ", *[{
            "00081150": element("UI", r.sop_class_uid),
            "00081155": element("UI", r.sop_instance_uid),
            **({"00081190": element("UR", retrieve_url(request, r.study_uid, r.series_uid,
                                                        r.sop_instance_uid))}
               if r.study_uid and r.series_uid else {}),
        } for r in stored])
    if failed:
        payload["00081198"] = element("SQ", *[{
            **({"00081150": element("UI", r.sop_class_uid)} if r.sop_class_uid else {}),
            **({"00081155": element("UI", r.sop_instance_uid)} if r.sop_instance_uid else {}),
            "00081197": element("US", r.failure),
        } for r in failed])
        for r in failed:
            log.info("stow.part_failed", sop_instance_uid=r.sop_instance_uid,
                     failure=f"0x{r.failure:04X}", reason=r.reason)
    if not failed:
        status = 200
    elif stored:
        status = 202
    elif all(r.failure == CANNOT_UNDERSTAND for r in failed):
        status = 400
    else:
        status = 409
    headers = {}
    if failed:
        # The response dataset has codes only; the first reason in words for people.
        reason = failed[0].reason.replace('"', "'").encode("ascii", "replace").decode()[:200]
        headers["Warning"] = f'299 {request.host}: "{reason}"'
    return json_response(payload, status=status, headers=headers)
