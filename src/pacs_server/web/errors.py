"""The one table from errors to HTTP statuses (the twin of dicom/status.py), and the
middleware that applies it: a bad request gets a 4xx with a JSON reason, never a
traceback; an unexpected error a 500 with a one-line reason, logged with its traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from pacs_server.errors import (
    ConflictingRequest,
    Forbidden,
    IndexUnavailable,
    InvalidQuery,
    InvalidRequest,
    NotAcceptable,
    NotAuthorized,
    NotFound,
    PacsError,
    RequestTimeout,
    RequestTooLarge,
    ServiceUnavailable,
    StorageFull,
    StorageUnavailable,
    TranscodeFailed,
    UnsupportedMediaType,
)

log = structlog.get_logger(__name__)

HTTP_STATUS: dict[type[PacsError], int] = {
    InvalidRequest: 400,
    InvalidQuery: 400,
    NotAuthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotAcceptable: 406,
    TranscodeFailed: 406,       # the requested transfer syntax cannot be produced
    RequestTimeout: 408,
    ConflictingRequest: 409,
    RequestTooLarge: 413,
    UnsupportedMediaType: 415,
    StorageFull: 507,
    StorageUnavailable: 503,
    IndexUnavailable: 503,
    ServiceUnavailable: 503,
}


def http_status(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_response(status: int, message: str) -> web.Response:
    rsp = web.json_response({"error": message, "status": status}, status=status)
    if status == 401:
        rsp.headers["WWW-Authenticate"] = 'Bearer realm="pacs_server"'
    return rsp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PacsError as exc:
        status = http_status(exc)
        if status >= 500:
            log.warning("http.failed", path=request.path, status=status, error=str(exc))
        return error_response(status, str(exc) or type(exc).__name__)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (unknown route 404, wrong method 405, body too big 413).
        return error_response(exc.status, exc.reason)
    except Exception as exc:  # the server keeps serving; the log has the traceback
        log.error("http.error", path=request.path, exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}")
