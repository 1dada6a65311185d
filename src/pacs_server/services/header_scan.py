"""A walk over the top-level elements of a Little Endian dataset, without decoding.

The store path needs about twenty values and the offset of Pixel Data; pydicom's reader
builds every element of the header for that (about 1 ms for a CT). This walk reads only
tags and lengths, skips sequences (defined or undefined length, nested), and returns
where the wanted values are. Anything it does not understand raises ScanError and the
caller falls back to pydicom, so it can only make the common case faster.
"""

from __future__ import annotations

import struct
from collections.abc import Container

# VRs with a 2-byte reserved field and a 4-byte length in Explicit VR (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR",
             b"SV", b"UV"}
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32

Found = dict[int, tuple[str | None, int, int]]      # tag -> (VR or None, value offset, length)


class ScanError(Exception):
    """The bytes are not a dataset this walk understands; use the full parser."""


def scan(buf: bytes | memoryview, pos: int, end: int, implicit: bool,
         wanted: Container[int]) -> tuple[Found, int]:
    """Walk top-level elements from `pos`; return the wanted ones and the offset of
    Pixel Data (or `end` when there is none)."""
    found: Found = {}
    while pos < end:
        tag, vr, length, hdr = _element(buf, pos, end, implicit)
        if tag == PIXEL_DATA:
            return found, pos
        value = pos + hdr
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, value, end, implicit or vr == "UN", 0)
            continue
        if value + length > end:
            raise ScanError("value runs past the end")
        if tag in wanted:
            found[tag] = (vr, value, length)
        pos = value + length
    return found, end


def _element(buf: bytes | memoryview, pos: int, end: int,
             implicit: bool) -> tuple[int, str | None, int, int]:
    if pos + 8 > end:
        raise ScanError("element header runs past the end")
    group, elem = _TAG.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if implicit:
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], 8
    raw_vr = bytes(buf[pos + 4:pos + 6])
    if not raw_vr.isalpha() or not raw_vr.isupper():
        raise ScanError("not an explicit VR")
    if raw_vr in _LONG_VRS:
        if pos + 12 > end:
            raise ScanError("element header runs past the end")
        return tag, raw_vr.decode(), _U32.unpack_from(buf, pos + 8)[0], 12
    return tag, raw_vr.decode(), _U16.unpack_from(buf, pos + 6)[0], 8


def _skip_sequence(buf: bytes | memoryview, pos: int, end: int, implicit: bool,
                   depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise ScanError("sequences nested too deep")
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        (length,) = _U32.unpack_from(buf, pos + 4)
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM:
            raise ScanError("expected a sequence item")
        if length != _UNDEFINED:
            pos += 8 + length
            continue
        pos = _skip_item(buf, pos + 8, end, implicit, depth + 1)
    raise ScanError("sequence is not closed")


def _skip_item(buf: bytes | memoryview, pos: int, end: int, implicit: bool, depth: int) -> int:
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        if (group << 16) | elem == _ITEM_END:
            return pos + 8
        _tag, vr, length, hdr = _element(buf, pos, end, implicit)
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, pos + hdr, end, implicit or vr == "UN", depth + 1)
        else:
            pos += hdr + length
    raise ScanError("item is not closed")
