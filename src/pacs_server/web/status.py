"""The open routes: /metrics (Prometheus), /status (JSON), /healthz (200 or 503)."""

from __future__ import annotations

from aiohttp import web

from pacs_server.web.ports import Control


def routes(control: Control) -> list[web.RouteDef]:
    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = await control.metrics()
        rsp = web.Response(body=body)
        rsp.headers["Content-Type"] = content_type
        return rsp

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(await control.status())

    async def healthz(_request: web.Request) -> web.Response:
        reason = await control.health()
        if reason is None:
            return web.Response(text="ok\n")
        return web.Response(text=reason + "\n", status=503)

    return [web.get("/metrics", metrics), web.get("/status", status),
            web.get("/healthz", healthz)]
