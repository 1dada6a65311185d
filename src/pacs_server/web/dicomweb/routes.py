"""The DICOMweb route table under `dicomweb.root` (PS3.18 10.4-10.6) and `/wado` (9),
and `install()`, which `web/site.py build_app` calls.

Rendered and thumbnail resources (PS3.18 10.4.1.1.3/4) come from
`web/dicomweb/rendered.py`, whose `routes(control, cfg)` returns more of the same
`web.RouteDef`s, added by `install()` after the ones below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from pacs_server.config import DicomWebConfig
from pacs_server.errors import ServiceUnavailable
from pacs_server.services.dicomweb import DicomWeb
from pacs_server.web.dicomweb import qido, stow, wado, wado_uri
from pacs_server.web.dicomweb.access import Access
from pacs_server.web.dicomweb.dicomjson import ROOT
from pacs_server.web.ports import Control

Endpoint = Callable[[web.Request, DicomWeb], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bind(control: Control, endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        backend = control.dicomweb()
        if backend is None:      # the access middleware answers first; kept for safety
            raise ServiceUnavailable("DICOMweb needs the index")
        return await endpoint(request, backend)
    return handle


def _search(resource: str) -> Endpoint:
    async def search(request: web.Request, backend: DicomWeb) -> web.StreamResponse:
        return await qido.search(request, backend, resource)
    return search


def routes(control: Control, cfg: DicomWebConfig) -> list[web.RouteDef]:
    """Every DICOMweb route; `{study}`, `{series}`, `{instance}` are checked UIDs."""
    r = cfg.root
    study = f"{r}/studies/{{study}}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"

    def get(path: str, endpoint: Endpoint) -> web.RouteDef:
        return web.get(path, _bind(control, endpoint))

    return [
        # QIDO-RS (10.6)
        get(f"{r}/studies", _search("studies")),
        get(f"{r}/series", _search("series")),
        get(f"{r}/instances", _search("instances")),
        get(f"{study}/series", _search("series")),
        get(f"{study}/instances", _search("instances")),
        get(f"{series}/instances", _search("instances")),
        # WADO-RS (10.4)
        get(study, wado.instances),
        get(series, wado.instances),
        get(instance, wado.instances),
        get(f"{study}/metadata", wado.metadata),
        get(f"{series}/metadata", wado.metadata),
        get(f"{instance}/metadata", wado.metadata),
        get(f"{instance}/frames/{{frames}}", wado.frames),
        get(f"{instance}/bulk/{{tag}}", wado.bulk),
        # STOW-RS (10.5)
        web.post(f"{r}/studies", _bind(control, stow.store)),
        web.post(study, _bind(control, stow.store)),
        # WADO-URI (9)
        get("/wado", wado_uri.retrieve),
    ]


def install(app: web.Application, control: Control, cfg: DicomWebConfig) -> None:
    """Add DICOMweb to the HTTP side: its access/CORS/audit middleware, its routes."""
    access = Access(control, cfg.root)
    app[ROOT] = cfg.root
    app.middlewares.append(access.middleware)
    app.on_response_prepare.append(access.on_prepare)
    app.add_routes(routes(control, cfg))
    # Rendered and thumbnail resources go here, from web/dicomweb/rendered.py:
    # app.add_routes(rendered.routes(control, cfg))
