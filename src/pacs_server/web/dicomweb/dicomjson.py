"""DICOM JSON responses (PS3.18 F.2) and the URLs they carry."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pacs_server.web.dicomweb.accept import DICOM_JSON

ROOT = web.AppKey("dicomweb_root", str)


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return raw_json_response(body, status=status, headers=headers)


def raw_json_response(body: bytes, status: int = 200,
                      headers: dict[str, str] | None = None) -> web.Response:
    rsp = web.Response(body=body, status=status, headers=headers)
    rsp.headers["Content-Type"] = DICOM_JSON    # UTF-8 by definition (RFC 8259 8.1)
    return rsp


def base_url(request: web.Request) -> str:
    """Absolute URL of the DICOMweb root as the client reached it (the Host header's
    host and port)."""
    return f"{request.scheme}://{request.host}{request.app[ROOT]}"


def retrieve_url(request: web.Request, study: str, series: str = "",
                 instance: str = "") -> str:
    url = f"{base_url(request)}/studies/{study}"
    if series:
        url += f"/series/{series}"
        if instance:
            url += f"/instances/{instance}"
    return url


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}
