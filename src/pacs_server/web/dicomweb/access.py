"""Who may use DICOMweb, CORS, and the audit record of every request.

`dicomweb.access`: `loopback` (clients on this host, no credentials), `open`, or
`credentials` (the bearer token `dicomweb.token`, or an HTTP Basic user of
`dicomweb.users`, RFC 7617, whose password is kept as a scrypt hash). CORS (Fetch
standard): no header unless the Origin is in `dicomweb.cors_origins`; preflights are
answered before authentication, since browsers send them without credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from pacs_server.config import DicomWebConfig
from pacs_server.errors import Forbidden, NotAuthorized, PacsError
from pacs_server.passwords import check_password
from pacs_server.web.errors import error_response, http_status
from pacs_server.web.ports import Control

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Accept, Accept-Encoding, Content-Type"
EXPOSE_HEADERS = "Content-Type, Content-Length, Content-Encoding, Content-Location, Warning"
_ORIGIN = web.RequestKey("dicomweb_origin", str)
_USER = web.RequestKey("dicomweb_user", str)
_VERIFIED_TTL_S = 300.0      # a checked Basic credential is trusted this long (scrypt is slow)


def service_of(request: web.Request, root: str) -> str:
    """The audited service name of a DICOMweb request."""
    if request.path == "/wado":
        return "WADO-URI"
    if request.method == "POST":
        return "STOW-RS"
    tail = request.path[len(root):].rstrip("/")
    last = tail.rsplit("/", 1)[-1]
    if last in ("studies", "series", "instances"):
        return "QIDO-RS"
    return "WADO-RS"


class Access:
    """The middleware of the DICOMweb paths (root and /wado); others pass untouched."""

    def __init__(self, control: Control, root: str) -> None:
        self._control = control
        self._root = root
        self._verified: dict[bytes, float] = {}

    def _ours(self, path: str) -> bool:
        return path == "/wado" or path == self._root or path.startswith(self._root + "/")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._ours(request.path):
            return await handler(request)
        backend = self._control.dicomweb()
        if backend is None:
            return error_response(503, "DICOMweb needs the index (and dicomweb.enabled)")
        cfg = backend.config()
        origin = request.headers.get("Origin", "")
        allowed = bool(origin) and ("*" in cfg.cors_origins or origin in cfg.cors_origins)
        if allowed:
            request[_ORIGIN] = origin
        if request.method == "OPTIONS":
            return self._preflight(request, allowed)
        started = time.monotonic()
        service = service_of(request, self._root)
        try:
            request[_USER] = self._authenticate(request, cfg)
            rsp = await handler(request)
        except PacsError as exc:
            rsp = error_response(http_status(exc), str(exc) or type(exc).__name__)
            if isinstance(exc, NotAuthorized):
                rsp.headers["WWW-Authenticate"] = (
                    'Basic realm="pacs_server DICOMweb"' if cfg.users
                    else 'Bearer realm="pacs_server DICOMweb"')
        self._control.audit_web(
            service, rsp.status, method=request.method, path=request.path,
            query=request.query_string[:500], address=request.remote or "",
            user=request.get(_USER, ""), origin=origin,
            duration_ms=round((time.monotonic() - started) * 1000, 1))
        return rsp

    def _preflight(self, request: web.Request, allowed: bool) -> web.StreamResponse:
        if not allowed:
            return error_response(403, "CORS: this origin is not in dicomweb.cors_origins")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600"})

    def _authenticate(self, request: web.Request, cfg: DicomWebConfig) -> str:
        """The user name ("" when anonymous is allowed).

        Raises:
            Forbidden: `loopback` and the client is elsewhere.
            NotAuthorized: `credentials` and none valid.
        """
        if cfg.access == "open":
            return ""
        if cfg.access == "loopback":
            if _is_loopback(request.remote):
                return ""
            raise Forbidden("DICOMweb is open to this host only (dicomweb.access: loopback)")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and cfg.token and hmac.compare_digest(
                value.encode(), cfg.token.encode()):
            return "token"
        if scheme.lower() == "basic":
            user = self._basic(value, cfg)
            if user:
                return user
        raise NotAuthorized("DICOMweb needs credentials: a bearer token or an HTTP Basic user")

    def _basic(self, value: str, cfg: DicomWebConfig) -> str:
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        user = next((u for u in cfg.users if u.name == name), None)
        if user is None:
            return ""
        key = hashlib.sha256(f"{user.password_hash}\0{password}".encode()).digest()
        now = time.monotonic()
        if self._verified.get(key, 0.0) > now:
            return name
        if not check_password(password, user.password_hash):
            return ""
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified[key] = now + _VERIFIED_TTL_S
        return name

    @staticmethod
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        """CORS headers on every answer to an allowed origin, streams included (they
        are set here, before the headers are sent)."""
        origin = request.get(_ORIGIN)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            vary = response.headers.get("Vary")
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
