"""The HTTP side as a component of the server: one aiohttp AppRunner + TCPSite in the
server's loop (no thread, no signal handlers of its own: `handle_signals=False`)."""

from __future__ import annotations

import errno
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from pacs_server.config import DicomWebConfig
from pacs_server.errors import NotAuthorized, StartupError
from pacs_server.web import api, status
from pacs_server.web.dicomweb import rendered
from pacs_server.web.dicomweb import routes as dicomweb_routes
from pacs_server.web.errors import error_middleware
from pacs_server.web.ports import Control
from pacs_server.web.viewer import ViewerSite

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(control: Control, count: Callable[[str, int], None] | None = None,
              dicomweb: DicomWebConfig | None = None,
              viewer: ViewerSite | None = None) -> web.Application:
    """The aiohttp application: open routes, /api behind the token, DICOMweb under
    `dicomweb.root` behind its own access rules, the viewer (when given), one error
    table."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            try:
                api.check_token(control, request)
            except NotAuthorized as exc:
                control.audit("api.refused", "refused", path=request.path,
                              remote=request.remote or "", reason=str(exc))
                raise
        return await handler(request)

    @web.middleware
    async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
        rsp = await handler(request)
        if count is not None:
            resource = request.match_info.route.resource
            count(resource.canonical if resource is not None else "unmatched", rsp.status)
        return rsp

    app = web.Application(middlewares=[counted, error_middleware, guard],
                          client_max_size=1 << 20)
    app.add_routes(status.routes(control))
    app.add_routes(api.routes(control))
    if dicomweb is not None and dicomweb.enabled:
        dicomweb_routes.install(app, control, dicomweb)
        app.add_routes(rendered.routes(control, dicomweb))
    if viewer is not None:
        app.add_routes(viewer.routes())
    return app


class HttpSide:
    """Serves `build_app(control)` on host:port (0 = ephemeral; `port` tells which)."""

    name = "http"

    def __init__(self, control: Control, host: str, port: int,
                 dicomweb: DicomWebConfig | None = None,
                 count: Callable[[str, int], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 viewer: ViewerSite | None = None) -> None:
        self._app = build_app(control, count, dicomweb, viewer)
        self._ssl = ssl_context
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None,
                               shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True,
                           ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            why = ("is already in use" if exc.errno == errno.EADDRINUSE
                   else f"cannot be bound: {exc.strerror}")
            raise StartupError(f"HTTP port {self._port} on {self._host} {why}") from None
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
