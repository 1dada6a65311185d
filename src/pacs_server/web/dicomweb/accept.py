"""Media type negotiation (PS3.18 8.7.5, RFC 9110 12.5.1), lenient the way real clients
need it: parameters quoted or not, any case, `type` missing from a multipart range, the
`accept` query parameter (PS3.18 8.3.3.1) before the header. A request nothing can
answer gets 406 with the types that would have worked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from pacs_server.errors import NotAcceptable

DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class MediaRange:
    """One `type/subtype; name=value` of an Accept or Content-Type header."""

    mime: str                                   # lower case
    params: dict[str, str] = field(default_factory=dict)   # names lower case, unquoted
    q: float = 1.0

    def param(self, name: str) -> str:
        return self.params.get(name, "")


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes."""
    out, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_media(text: str) -> MediaRange:
    """One media range (`multipart/related; type="application/dicom"`)."""
    pieces = _split(text, ";")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name, value = name.strip().lower(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        elif name:
            params[name] = value
    return MediaRange(pieces[0].strip().lower(), params, q)


def parse_accept(header: str) -> list[MediaRange]:
    """The ranges of an Accept header, best first (q, then order); q=0 dropped."""
    ranges = [parse_media(part) for part in _split(header, ",") if part.strip()]
    ranges = [r for r in ranges if r.q > 0 and r.mime]
    return sorted(ranges, key=lambda r: -r.q)


def accepted(request: web.Request) -> list[MediaRange]:
    """What the client accepts: the `accept` query parameter, else the header; `*/*`
    when it says nothing."""
    values = request.query.getall("accept", [])
    header = ",".join(values) if values else request.headers.get("Accept", "")
    return parse_accept(header) or [MediaRange("*/*")]


def want_json(request: web.Request) -> None:
    """QIDO-RS and metadata answer DICOM JSON: `application/dicom+json`, `application/json`
    or a wildcard must be among the ranges (`application/dicom+json, multipart/related;
    ...` is fine).

    Raises:
        NotAcceptable: 406.
    """
    for r in accepted(request):
        if r.mime in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable(f"this resource is {DICOM_JSON}; Accept was "
                        f"{request.headers.get('Accept', '')!r}")


def multipart_syntax(request: web.Request, part_type: str, also: tuple[str, ...] = ()) -> str:
    """The transfer-syntax asked for a `multipart/related; type=<part_type>` response
    ("" = none named, `*` = as stored).

    `multipart/related` without `type` or with `type="*/*"` (dicomweb-client's default),
    `<part_type>` alone (answered as multipart, the only form of these resources), the
    types in `also` and wildcards are accepted.

    Raises:
        NotAcceptable: 406.
    """
    for r in accepted(request):
        kind = r.param("type").lower()
        if r.mime == "multipart/related" and kind in ("", "*/*", part_type, *also):
            return r.param("transfer-syntax")
        if r.mime in (part_type, *also):
            return r.param("transfer-syntax")
        if r.mime in ("*/*", "multipart/*"):
            return ""
    raise NotAcceptable(f'this resource is multipart/related; type="{part_type}"; '
                        f"Accept was {request.headers.get('Accept', '')!r}")


# PS3.18 Table 8.7.3-5: the media type of compressed frames by transfer syntax.
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


def frame_media(request: web.Request, stored: str) -> tuple[str, str]:
    """(part media type, transfer-syntax asked) for frames or Pixel Data of an instance
    stored as `stored`: `application/octet-stream` (any syntax we can produce), or the
    compressed media type of the stored syntax (sent as stored).

    Raises:
        NotAcceptable: 406.
    """
    own = FRAME_MEDIA.get(stored, "")
    for r in accepted(request):
        kind = r.param("type").lower() if r.mime == "multipart/related" else r.mime
        if kind in ("", "*/*", "multipart/*", "application/octet-stream"):
            return "application/octet-stream", r.param("transfer-syntax")
        if own and kind == own and r.param("transfer-syntax") in ("", "*", stored):
            return own, stored
    raise NotAcceptable(
        "frames are multipart/related; type=\"application/octet-stream\""
        + (f" or type=\"{own}\"" if own else "")
        + f"; Accept was {request.headers.get('Accept', '')!r}")
