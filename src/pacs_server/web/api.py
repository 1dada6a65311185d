"""/api/...: the admin API behind a bearer token; pacsctl is its client.

Every parameter is checked here before it reaches the server (ints, AE titles, levels);
paths given by the client (backup destination, reindex directory) are checked again by
the code that uses them. Long jobs (verify, reindex) stream one JSON object per line:
progress records, then the report with `"done": true`.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from pacs_server.errors import InvalidRequest, NotAuthorized, NotFound
from pacs_server.web.events import stream_events
from pacs_server.web.ports import Control

LEVELS = ("patients", "studies", "series", "instances")
FILTERS = {"patient_id", "name", "date", "modality", "accession", "study_uid", "series_uid"}
MAX_LIMIT = 1000


def check_token(control: Control, request: web.Request) -> None:
    """Raises NotAuthorized unless the request carries the configured bearer token."""
    expected = control.token()
    if not expected:
        raise NotAuthorized("the admin API is off: set admin.token or admin.token_file")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise NotAuthorized("missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise NotAuthorized("wrong bearer token")


def int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an integer, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidRequest(f"{name}: must be {low}-{high}, got {number}")
    return number


_ASSOC_ID = re.compile(r"^[1-9][0-9]{0,17}(-[1-9][0-9]{0,17})?$")


def assoc_param(value: str) -> str:
    """An association id: "7", or "<worker>-<n>" ("2-7") with server.workers."""
    if not _ASSOC_ID.match(value):
        raise InvalidRequest(f"id: expected an association id such as 7 or 2-7, got {value!r}")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: expected a string")
    if required and not value.strip():
        raise InvalidRequest(f"{name}: required")
    return value.strip()


async def ndjson(request: web.Request, records: AsyncIterator[dict[str, Any]]
                 ) -> web.StreamResponse:
    """Stream records as JSON lines (the first record fails as a plain JSON error)."""
    first = await anext(records)
    rsp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await rsp.prepare(request)
    await rsp.write(json.dumps(first).encode() + b"\n")
    async for record in records:
        await rsp.write(json.dumps(record).encode() + b"\n")
    await rsp.write_eof()
    return rsp


def routes(control: Control) -> list[web.RouteDef]:
    def audited(action: str, **fields: Any) -> None:
        control.audit(action, "success", **fields)

    async def status(_r: web.Request) -> web.Response:
        return web.json_response(await control.status())

    async def associations(_r: web.Request) -> web.Response:
        return web.json_response({"associations": await control.associations()})

    async def association(request: web.Request) -> web.Response:
        assoc_id = assoc_param(request.match_info["id"])
        found = await control.association(assoc_id)
        if found is None:
            raise NotFound(f"no live association {assoc_id}")
        return web.json_response(found)

    async def disconnect(request: web.Request) -> web.Response:
        assoc_id = assoc_param(request.match_info["id"])
        if not await control.disconnect(assoc_id):
            raise NotFound(f"no live association {assoc_id}")
        audited("disconnect", association=assoc_id)
        return web.json_response({"disconnected": assoc_id})

    async def pause(_r: web.Request) -> web.Response:
        control.pause()
        audited("pause")
        return web.json_response({"accepting": False, "paused": True})

    async def resume(_r: web.Request) -> web.Response:
        control.resume()
        audited("resume")
        return web.json_response({"accepting": True, "paused": False})

    async def browse(request: web.Request) -> web.Response:
        level = request.match_info["level"]
        if level not in LEVELS:
            raise NotFound(f"no such level {level!r} (one of {', '.join(LEVELS)})")
        unknown = set(request.query) - FILTERS - {"offset", "limit"}
        if unknown:
            raise InvalidRequest(f"unknown filter {sorted(unknown)[0]!r} "
                                 f"(expected: {', '.join(sorted(FILTERS))})")
        filters = {k: v for k, v in request.query.items() if k in FILTERS and v}
        offset = int_param(request.query.get("offset"), "offset", 0, 0, 10**9)
        limit = int_param(request.query.get("limit"), "limit", 50, 1, MAX_LIMIT)
        return web.json_response(await control.browse(level, filters, offset, limit))

    async def stats(_r: web.Request) -> web.Response:
        return web.json_response(await control.stats())

    async def verify(request: web.Request) -> web.StreamResponse:
        repair = request.query.get("repair", "") in ("1", "true", "yes")
        audited("verify", repair=repair)
        return await ndjson(request, control.verify(repair))

    async def reindex(request: web.Request) -> web.StreamResponse:
        directory = text_field(await json_body(request), "directory")
        audited("reindex", directory=directory)
        return await ndjson(request, control.reindex(directory))

    async def backup(request: web.Request) -> web.Response:
        destination = text_field(await json_body(request), "destination")
        result = await control.backup(destination)
        audited("backup", destination=destination)
        return web.json_response(result)

    async def ae_list(_r: web.Request) -> web.Response:
        return web.json_response({"ae_titles": await control.access("list")})

    async def ae_change(request: web.Request) -> web.Response:
        body = await json_body(request)
        action = "add" if request.method == "POST" else "remove"
        title, host = text_field(body, "ae_title"), text_field(body, "host", required=False)
        result = await control.access(action, title, host)
        audited(f"ae.{action}", ae_title=title, host=host)
        return web.json_response(result)

    async def peer_list(_r: web.Request) -> web.Response:
        return web.json_response({"peers": await control.peers("list")})

    async def peer_change(request: web.Request) -> web.Response:
        body = await json_body(request)
        title = text_field(body, "ae_title")
        if request.method == "POST":
            port = body.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise InvalidRequest("port: expected an integer 1-65535")
            result = await control.peers("add", title, text_field(body, "host"), port)
            audited("peers.add", ae_title=title, host=body["host"], port=port)
        else:
            result = await control.peers("remove", title)
            audited("peers.remove", ae_title=title)
        return web.json_response(result)

    async def events(request: web.Request) -> web.StreamResponse:
        return await stream_events(request, control.events(), control.events_ready)

    return [
        web.get("/api/status", status),
        web.get("/api/associations", associations),
        web.get("/api/associations/{id}", association),
        web.delete("/api/associations/{id}", disconnect),
        web.post("/api/pause", pause),
        web.post("/api/resume", resume),
        web.get("/api/browse/{level}", browse),
        web.get("/api/stats", stats),
        web.post("/api/verify", verify),
        web.post("/api/reindex", reindex),
        web.post("/api/backup", backup),
        web.get("/api/ae", ae_list),
        web.post("/api/ae", ae_change),
        web.delete("/api/ae", ae_change),
        web.get("/api/peers", peer_list),
        web.post("/api/peers", peer_change),
        web.delete("/api/peers", peer_change),
        web.get("/api/events", events),
    ]
