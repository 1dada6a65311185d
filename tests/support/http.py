"""An HTTP client for the server's HTTP side (aiohttp's own client, against the real
server) and Prometheus text parsing."""

from __future__ import annotations

from typing import Any

import aiohttp

from support.server import RunningServer

TOKEN = "test-token-0123456789abcdef"


def base_url(server: RunningServer) -> str:
    """http://127.0.0.1:<port> of a RunningServer's HTTP side."""
    assert server.http_port, "the HTTP side is not running"
    return f"http://127.0.0.1:{server.http_port}"


async def http_get(base: str, path: str, token: str | None = None) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one GET."""
    return await http_call(base, "GET", path, token=token)


async def http_call(base: str, method: str, path: str, token: str | None = TOKEN,
                    body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request, with the bearer token by default."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, headers=headers, json=body) as rsp:
            if rsp.content_type == "application/json":
                return rsp.status, await rsp.json()
            return rsp.status, await rsp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",")
                     if "=" in part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0
