"""The HTTP client of pacsctl: JSON requests, JSON-lines streams, server-sent events.

Standard library only (urllib), so pacsctl runs wherever the package is installed; an
error answer becomes `ApiError` with the server's one-line reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


class ApiError(Exception):
    """The server refused or failed (status code and its reason), or is unreachable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        target = self.url + path
        if query:
            target += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v not in (None, "")})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(target, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read().decode("utf-8", "replace"))["error"]
            except (ValueError, KeyError, TypeError):
                reason = exc.reason
            raise ApiError(exc.code, str(reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach {self.url}: {why}") from None

    def get(self, path: str, **query: Any) -> Any:
        with self._request("GET", path, query=query) as rsp:
            return json.loads(rsp.read())

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._request(method, path, body=body if body is not None else {}) as rsp:
            return json.loads(rsp.read())

    def stream(self, path: str, body: dict[str, Any] | None = None,
               **query: Any) -> Iterator[dict[str, Any]]:
        """POST, then one JSON object per line as the server sends them."""
        data_query = {k: v for k, v in query.items() if v}
        with self._request("POST", path, body=body or {}, query=data_query,
                           timeout=3600) as rsp:
            for line in rsp:
                if line.strip():
                    yield json.loads(line)

    def events(self) -> Iterator[dict[str, Any]]:
        """Server-sent events from /api/events until the connection ends."""
        with self._request("GET", "/api/events", timeout=3600) as rsp:
            kind, data = "", ""
            for raw in rsp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    event = json.loads(data)
                    event.setdefault("kind", kind)
                    yield event
                    kind, data = "", ""
