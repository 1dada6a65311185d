"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3 and 10.4.1.1.4): a frame
as a consumer image, JPEG or PNG, rendered by `services/render.py`.

- `.../instances/{i}/rendered` (the first frame of a multi-frame instance) and
  `.../frames/{n}/rendered` (one frame number);
- `thumbnail` at instance, frame, series and study level: the series' middle instance
  (by Instance Number), the study's first series; 128 pixels on the longer side unless
  `viewport` says otherwise.

Query parameters (PS3.18 8.3.5): `accept` (before the Accept header), `window=center,
width[,function]`, `viewport=width,height`, `quality` (JPEG, 1-100). `annotation` and
`iccprofile` are accepted and ignored. Anything but image/jpeg, image/png or a wildcard
gets 406.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from pacs_server.config import DicomWebConfig
from pacs_server.errors import InvalidQuery, NotAcceptable
from pacs_server.services import render
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.services.dicomweb_retrieve import check_uid
from pacs_server.web.dicomweb.accept import accepted
from pacs_server.web.ports import Control

Endpoint = Callable[[web.Request, DicomWeb], Awaitable[web.StreamResponse]]


def media_type(request: web.Request) -> str:
    """image/jpeg or image/png, the first the client accepts; a wildcard gets JPEG.

    Raises:
        NotAcceptable: 406.
    """
    for r in accepted(request):
        if r.mime in render.MEDIA_TYPES:
            return r.mime
        if r.mime in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable("rendered resources are image/jpeg or image/png; Accept was "
                        f"{request.headers.get('Accept', '')!r}")


def options(request: web.Request, frame: int = 1, thumbnail: bool = False
            ) -> render.RenderOptions:
    """The RenderOptions a request asks for (checked: 400 for a bad value)."""
    query = request.query
    window = render.parse_window(query["window"]) if query.get("window") else None
    if query.get("viewport"):
        viewport: tuple[int, int] | None = render.parse_viewport(query["viewport"])
    else:
        viewport = (render.THUMBNAIL_SIZE,) * 2 if thumbnail else None
    quality = _int(query.get("quality", ""), "quality", 90, 100)
    return render.RenderOptions(media_type(request), frame, window, viewport, quality)


def _int(text: str, name: str, default: int, high: int) -> int:
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise InvalidQuery(f"{name}: an integer 1-{high}, got {text[:20]!r}")
    return int(text)


async def wado_uri(request: web.Request, backend: DicomWeb, kinds: list[str]
                   ) -> web.Response:
    """WADO-URI's rendered answer (PS3.18 9.1.2: contentType image/jpeg, the default, or
    image/png; rows, columns, windowCenter with windowWidth, frameNumber, imageQuality).

    Raises:
        NotAcceptable: no contentType we render (406). InvalidQuery: a bad parameter.
    """
    mime = next((k for k in kinds if k in render.MEDIA_TYPES),
                "image/jpeg" if {"*/*", "image/*"} & set(kinds) else None)
    if mime is None:
        raise NotAcceptable("WADO-URI answers contentType application/dicom, image/jpeg "
                            f"or image/png, not {', '.join(kinds)}")
    query = request.query
    window = None
    center, width = query.get("windowCenter", ""), query.get("windowWidth", "")
    if center or width:
        if not (center and width):
            raise InvalidQuery("windowCenter and windowWidth go together")
        window = render.parse_window(f"{center},{width}")
    rows = _int(query.get("rows", ""), "rows", 0, render.MAX_VIEWPORT)
    columns = _int(query.get("columns", ""), "columns", 0, render.MAX_VIEWPORT)
    viewport = ((columns or render.MAX_VIEWPORT, rows or render.MAX_VIEWPORT)
                if rows or columns else None)
    opts = render.RenderOptions(
        mime, _int(query.get("frameNumber", ""), "frameNumber", 1, 1 << 31), window,
        viewport, _int(query.get("imageQuality", ""), "imageQuality", 90, 100))
    return await rendered_response(backend, opts, StudyInstanceUID=query["studyUID"],
                                   SeriesInstanceUID=query["seriesUID"],
                                   SOPInstanceUID=query["objectUID"])


def frame_number(text: str) -> int:
    """The one frame number of a `frames/{n}/rendered` URL."""
    if not text.isdigit() or int(text) < 1:
        raise InvalidQuery(f"frames: {text[:20]!r}: rendered resources take one frame "
                           "number (1 or more)")
    return int(text)


async def rendered_response(backend: DicomWeb, opts: render.RenderOptions,
                            **uids: str) -> web.Response:
    """The image of the instance (or the representative of the series or study) the
    UIDs name; also WADO-URI's rendered answer (web/dicomweb/wado_uri.py)."""
    for keyword, value in uids.items():
        check_uid(value, keyword)
    refs = await backend.retrieve.select(**uids)
    paths = [backend.retrieve.path(ref) for ref in refs]
    if "SOPInstanceUID" in uids:
        path = paths[0]
    else:
        path = await asyncio.to_thread(render.representative, paths)
    body = await asyncio.to_thread(render.render, path, opts)
    return web.Response(body=body, content_type=opts.media_type)


def _endpoint(level: str, thumbnail: bool, frames: bool = False) -> Endpoint:
    names = {"study": ("StudyInstanceUID",),
             "series": ("StudyInstanceUID", "SeriesInstanceUID"),
             "instance": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}[level]
    params = ("study", "series", "instance")

    async def handle(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
        info = request.match_info
        frame = frame_number(info["frames"]) if frames else 1
        uids = {name: info[param] for name, param in zip(names, params, strict=False)}
        return await rendered_response(backend, options(request, frame, thumbnail), **uids)
    return handle


def routes(control: Control, cfg: DicomWebConfig) -> list[web.RouteDef]:
    """The rendered and thumbnail routes under `cfg.root` (added by routes.install)."""
    from pacs_server.web.dicomweb.routes import _bind  # routes.py imports this module

    study = f"{cfg.root}/studies/{{study}}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    frames = f"{instance}/frames/{{frames}}"
    table = [
        (f"{instance}/rendered", _endpoint("instance", False)),
        (f"{frames}/rendered", _endpoint("instance", False, frames=True)),
        (f"{instance}/thumbnail", _endpoint("instance", True)),
        (f"{frames}/thumbnail", _endpoint("instance", True, frames=True)),
        (f"{series}/thumbnail", _endpoint("series", True)),
        (f"{study}/thumbnail", _endpoint("study", True)),
    ]
    return [web.get(path, _bind(control, endpoint)) for path, endpoint in table]
