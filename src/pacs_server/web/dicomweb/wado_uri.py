"""WADO-URI (PS3.18 9): `GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=`.

`contentType=application/dicom` answers the instance itself (as stored, or in the
`transferSyntax` asked, through the transcoding path); image/jpeg (the default
contentType of PS3.18 9.1.2.1.3) and image/png are rendered by web/dicomweb/rendered.py.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from pacs_server.errors import InvalidQuery
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.dicomweb_retrieve import check_uid
from pacs_server.web.dicomweb import rendered
from pacs_server.web.dicomweb.accept import parse_media
from pacs_server.web.dicomweb.wado import requested_syntax, target_syntax


async def retrieve(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
    query = request.query
    if query.get("requestType", "") != "WADO":
        raise InvalidQuery("requestType must be WADO")
    missing = [n for n in ("studyUID", "seriesUID", "objectUID") if not query.get(n)]
    if missing:
        raise InvalidQuery(f"missing {', '.join(missing)}")
    kinds = [parse_media(v).mime for v in query.get("contentType", "image/jpeg").split(",")]
    if "application/dicom" not in kinds:
        return await rendered.wado_uri(request, backend, kinds)
    refs = await backend.retrieve.select(
        StudyInstanceUID=check_uid(query["studyUID"], "studyUID"),
        SeriesInstanceUID=check_uid(query["seriesUID"], "seriesUID"),
        SOPInstanceUID=check_uid(query["objectUID"], "objectUID"))
    ref = refs[0]
    target = target_syntax(requested_syntax(query.get("transferSyntax", "")), ref)
    headers = {"Content-Type": "application/dicom",
               "Content-Disposition": f'attachment; filename="{ref.sop_instance_uid}.dcm"'}
    if target == ref.transfer_syntax_uid:
        return web.FileResponse(backend.retrieve.path(ref), headers=headers)
    data = await asyncio.to_thread(backend.retrieve.encoded, ref, target)
    return web.Response(body=data, headers=headers)
