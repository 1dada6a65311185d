"""WADO-RS handlers (PS3.18 10.4): instances, metadata, frames and bulk data.

Instances go out as stored, file chunk by file chunk, when the requested transfer
syntax is the stored one (`*` asks for that); otherwise through `services/transcode.py`,
the conversion C-GET uses. Series metadata comes from the gzipped cache
(`services/dicomweb_metadata.py`) and is sent gzipped to clients that accept it.
"""

from __future__ import annotations

import asyncio
import gzip
import re

from aiohttp import web
from pydicom.uid import UID

from pacs_server.errors import InvalidQuery, NotAcceptable, NotFound
from pacs_server.index.records import StoredRef
from pacs_server.services import transcode
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.dicomweb_metadata import instance_json, study_prefixed
from pacs_server.services.dicomweb_retrieve import check_uid, selected_syntax
from pacs_server.values import is_uid
from pacs_server.web.dicomweb.accept import frame_media, multipart_syntax, want_json
from pacs_server.web.dicomweb.dicomjson import json_response, raw_json_response
from pacs_server.web.dicomweb.multipart import MultipartStream

_FRAMES = re.compile(r"^[0-9]{1,6}(,[0-9]{1,6}){0,9999}$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_PIXEL_DATA = 0x7FE00010
_KEYWORDS = (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"),
             ("instance", "SOPInstanceUID"))


def path_uids(request: web.Request) -> dict[str, str]:
    """The UIDs of the URL, checked, as keyword → UID."""
    return {keyword: check_uid(request.match_info[name], keyword)
            for name, keyword in _KEYWORDS if name in request.match_info}


def requested_syntax(value: str) -> str:
    if value and value != "*" and not is_uid(value):
        raise InvalidQuery(f"transfer-syntax: {value[:70]!r} is not a UID or *")
    return value


def target_syntax(requested: str, ref: StoredRef) -> str:
    """The syntax to send `ref` in, or NotAcceptable (406) when there is no way."""
    target = selected_syntax(requested, ref.transfer_syntax_uid)
    if target != ref.transfer_syntax_uid and transcode.plan(
            ref.transfer_syntax_uid, [target]) is None:
        raise NotAcceptable(f"instance {ref.sop_instance_uid} is stored as "
                            f"{UID(ref.transfer_syntax_uid).name} and cannot be sent as "
                            f"{UID(target).name}; ask transfer-syntax=*")
    return target


async def instances(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
    """Study, series or instance retrieve: multipart/related; type="application/dicom"."""
    requested = requested_syntax(multipart_syntax(request, "application/dicom"))
    refs = await backend.retrieve.select(**path_uids(request))
    targets = [target_syntax(requested, ref) for ref in refs]      # 406 before any byte
    stream = MultipartStream(request, "application/dicom")
    await stream.open()
    try:
        for ref, target in zip(refs, targets, strict=True):
            content_type = f"application/dicom; transfer-syntax={target}"
            if target == ref.transfer_syntax_uid:
                await stream.file_part(content_type, backend.retrieve.path(ref))
            else:
                data = await asyncio.to_thread(backend.retrieve.encoded, ref, target)
                await stream.part(content_type, data)
        return await stream.close()
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:  # anything after the headers: the body must not look whole
        return stream.abort(exc)


async def metadata(request: web.Request, backend: DicomWeb) -> web.Response:
    """Metadata at study, series or instance level (DICOM JSON with BulkDataURIs)."""
    want_json(request)
    uids = path_uids(request)
    if "SOPInstanceUID" in uids:
        (ref,) = await backend.retrieve.select(**uids)
        item = await asyncio.to_thread(instance_json, backend.retrieve.path(ref), "")
        return json_response([item])
    gzip_ok = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    if "SeriesInstanceUID" in uids:
        packed = await backend.series_metadata(uids["StudyInstanceUID"],
                                               uids["SeriesInstanceUID"])
        if gzip_ok:
            return raw_json_response(packed, headers={"Content-Encoding": "gzip",
                                                      "Vary": "Accept-Encoding"})
        return raw_json_response(await asyncio.to_thread(gzip.decompress, packed),
                                 headers={"Vary": "Accept-Encoding"})
    study = uids["StudyInstanceUID"]
    series_uids = await backend.search.series_of(study)
    if not series_uids:
        raise NotFound(f"no study {study}")
    parts = []
    for series_uid in series_uids:
        packed = await backend.series_metadata(study, series_uid)
        body = await asyncio.to_thread(gzip.decompress, packed)
        parts.append(study_prefixed(body, series_uid)[1:-1])
    return raw_json_response(b"[" + b",".join(p for p in parts if p) + b"]")


def _frame_numbers(text: str) -> list[int]:
    if not _FRAMES.match(text):
        raise InvalidQuery(f"frames: {text[:70]!r} is not a comma-separated list of numbers")
    numbers = [int(n) for n in text.split(",")]
    if 0 in numbers:
        raise InvalidQuery("frames: numbers start at 1")
    return numbers


async def frames(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
    """frames/{list}: multipart/related; type="application/octet-stream", one part per
    frame with its transfer syntax in the part's Content-Type (`*` = as stored)."""
    numbers = _frame_numbers(request.match_info["frames"])
    (ref,) = await backend.retrieve.select(**path_uids(request))
    media, requested = frame_media(request, ref.transfer_syntax_uid)
    target = target_syntax(requested_syntax(requested), ref)
    data, syntax = await asyncio.to_thread(backend.retrieve.frames, ref, numbers, target)
    return await _octet_parts(request, data, syntax, media)


async def bulk(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
    """bulk/{tag}: the value of a top-level element; Pixel Data as its frames."""
    text = request.match_info["tag"]
    if not _TAG.match(text):
        raise InvalidQuery(f"bulk: {text[:20]!r} is not a tag (8 hex digits)")
    tag = int(text, 16)
    (ref,) = await backend.retrieve.select(**path_uids(request))
    if tag == _PIXEL_DATA:
        media, requested = frame_media(request, ref.transfer_syntax_uid)
        target = target_syntax(requested_syntax(requested), ref)
        found = await asyncio.to_thread(backend.retrieve.frames_all, ref, target)
        return await _octet_parts(request, *found, media)
    multipart_syntax(request, "application/octet-stream")
    value = await asyncio.to_thread(backend.retrieve.bulk, ref, tag)
    return await _octet_parts(request, [value], "")


async def _octet_parts(request: web.Request, data: list[bytes], syntax: str,
                       media: str = "application/octet-stream") -> web.StreamResponse:
    stream = MultipartStream(request, media)
    await stream.open()
    content_type = media
    if syntax:
        content_type += f"; transfer-syntax={syntax}"
    for value in data:
        await stream.part(content_type, value)
    return await stream.close()
