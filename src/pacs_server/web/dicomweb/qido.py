"""QIDO-RS handlers (PS3.18 10.6): `studies`, `series`, `instances` and their nested forms.

Query values arrive percent-encoded (`%2A`, `%5E`, `%2C`); aiohttp decodes them once.
No match is 200 with an empty array; more matches than the page holds are cut at
`limit` (default and ceiling `dicomweb.max_results`) with a Warning header (10.6.3.2).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.dicomweb_query import build
from pacs_server.services.dicomweb_retrieve import check_uid
from pacs_server.web.dicomweb.accept import want_json
from pacs_server.web.dicomweb.dicomjson import element, json_response, retrieve_url

_SCOPE = (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"))


def _params(request: web.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in request.query.items():
        if name != "accept":
            out.setdefault(name, []).append(value)
    return out


async def search(request: web.Request, backend: DicomWeb, resource: str) -> web.Response:
    want_json(request)
    scope = {keyword: check_uid(request.match_info[name], keyword)
             for name, keyword in _SCOPE if name in request.match_info}
    req = build(resource, _params(request), scope, backend.config().max_results)
    found, more = await backend.search.search(req)
    payload = []
    for ds in found:
        item: dict[str, Any] = ds.to_json_dict()
        url = _url(request, item, req.level)
        if url:
            item["00081190"] = element("UR", url)
        payload.append(dict(sorted(item.items())))
    headers = {}
    if more:
        headers["Warning"] = (f'299 {request.host}: "There are more matches; ask again with '
                              f'offset={req.offset + len(found)}"')
    return json_response(payload, headers=headers)


def _url(request: web.Request, item: dict[str, Any], level: str) -> str:
    def uid(tag: str) -> str:
        values = item.get(tag, {}).get("Value") or [""]
        return str(values[0])

    study, series, sop = uid("0020000D"), uid("0020000E"), uid("00080018")
    if not study:
        return ""
    if level == "STUDY":
        return retrieve_url(request, study)
    if level == "SERIES" and series:
        return retrieve_url(request, study, series)
    if series and sop:
        return retrieve_url(request, study, series, sop)
    return ""
