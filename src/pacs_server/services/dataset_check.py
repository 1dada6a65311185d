"""The structure check of a received dataset, to its last byte, before Success.

An archive that acknowledges bytes no viewer can parse has lost the image all the
same, so every received dataset is walked once from the file, element by element:

* each element's tag, VR (explicit syntaxes) and length consistent with the transfer
  syntax (PS3.5 7.1); tags strictly ascending within each dataset and item (PS3.5 7.1);
* every sequence and item, of defined or undefined length, opened and closed where it
  claims (PS3.5 7.5): a defined-length item ends exactly on an element boundary;
* encapsulated Pixel Data (PS3.5 A.4): a Basic Offset Table item, fragment items of
  defined length, a Sequence Delimitation Item; undefined-length Pixel Data only in
  an encapsulated syntax, defined-length Pixel Data only in a native one;
* nothing after the end of the top-level dataset; a Deflated stream (PS3.5 A.5) ends
  where the file ends.

No value is decoded, except the few US/IS values of the Image Pixel module needed to
tell a native Pixel Data shorter than its rows, columns and frames (a semantic
mismatch, 0xA900). Values are skipped with a seek, so memory stays at one read buffer
whatever the file size; Deflated streams are inflated in bounded chunks.

A walk that succeeded leaves a proof of its layout (`_Layout`): every byte it read (the
element and item headers, the few Image Pixel values) at the offsets it read them, for
that transfer syntax and dataset size. The walk's verdict is a function of exactly
those bytes and the size, so a later dataset of the same size whose bytes at those
offsets are the same passes with the same result, checked with one masked integer
comparison instead of the element loop in Python (the instances of one series from one
modality share their layout; docs/performance.md, "Results: the structure walk and the
placement intent"). A layout is kept once a size was seen twice, so datasets whose
sizes never repeat (compressed frames) pay only the bookkeeping of one dict.

Deliberately accepted, as the standard's readers and dcmtk's dcmdump do: odd value
lengths (PS3.5 7.1.1 requires even ones, but old writers emit odd and the bytes still
parse), Data Set Trailing Padding (FFFC,FFFC), and private elements of any VR.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from pydicom._dicom_dict import DicomDictionary
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs_server.errors import DatasetMismatch, UnreadableDataset

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    b"UC UI UL UN UR US UT UV".split())
# VRs with 2 reserved bytes and a 4-byte length in Explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
# In Implicit VR the dictionary says which elements are sequences (PS3.5 7.1.3).
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64            # nesting (sequence + item) levels; real objects use < 10
_CHUNK = 64 * 1024
# Image Pixel module values the Pixel Data length is checked against (PS3.3 C.7.6.3).
_SAMPLES, _PHOTOMETRIC, _FRAMES, _ROWS, _COLUMNS, _BITS = (
    0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100)
_PIXEL_ATTRS = frozenset({_SAMPLES, _PHOTOMETRIC, _FRAMES, _ROWS, _COLUMNS, _BITS})

# What an element's VR asks of the walk: 0 a 2-byte length, else a 4-byte one (and
# for SQ, a sequence to open); _INVALID for bytes that are no VR (PS3.5 6.2).
_SHORT, _LONG, _SEQUENCE, _INVALID = 0, 1, 2, 3
_VR_KIND = {vr: _SEQUENCE if vr == b"SQ" else _LONG if vr in _LONG_VRS else _SHORT
            for vr in _VRS}
_OPENED = frozenset({_PIXEL_DATA})
_OPENED_TOP = _OPENED | _PIXEL_ATTRS
_HEAD_LE = struct.Struct("<HH2sH")        # tag, VR, 2-byte length (Explicit VR)
_HEAD_BE = struct.Struct(">HH2sH")
_HEAD_IMPLICIT = struct.Struct("<HHI")     # tag, 4-byte length (Implicit VR)
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")

_NATIVE: dict[str, tuple[bool, bool]] = {
    ImplicitVRLittleEndian: (True, False), ExplicitVRLittleEndian: (False, False),
    ExplicitVRBigEndian: (False, True)}


# The proofs of walked layouts: (syntax, dataset size, wanted tags) -> up to
# _LAYOUTS_PER_SIZE layouts, most recently used first. Read by the association threads
# without a lock (an entry is replaced whole, never mutated); changed under _CHANGING.
_LAYOUTS: dict[tuple[str, int, frozenset[int]], tuple[_Layout, ...]] = {}
_SEEN: dict[tuple[str, int, frozenset[int]], None] = {}     # sizes walked once, no proof yet
_CHANGING = threading.Lock()
# A proof is two integers of `span` bytes (mask, value): at most
# 32 x 4 x 2 x 64 KiB = 16 MiB, whatever the peers send.
_LAYOUTS_MAX = 32
_SEEN_MAX = 1024
_LAYOUTS_PER_SIZE = 4
_SPAN_MAX = 64 * 1024      # a proof reads the dataset's first `span` bytes at most


@dataclass(frozen=True, slots=True)
class _Layout:
    """What one successful walk read, as a mask over the dataset's first `span` bytes
    (read as one little-endian integer: 0xFF where the walk read a byte) and what those
    bytes were (`proof`); `found` and `pixel` its result (Walked)."""

    span: int
    mask: int
    proof: int
    found: dict[int, tuple[str | None, int, int]]
    pixel: int


def _proven(fh: BinaryIO, offset: int, key: tuple[str, int, frozenset[int]]
            ) -> Walked | None:
    """The result of the walk of a layout proven before, if this dataset has it."""
    layouts = _LAYOUTS.get(key)
    if not layouts:
        return None
    fh.seek(offset)
    prefix = fh.read(max(layout.span for layout in layouts))
    for i, layout in enumerate(layouts):
        if len(prefix) >= layout.span and int.from_bytes(
                prefix[:layout.span], "little") & layout.mask == layout.proof:
            if i:       # the next instance of this series tries it first
                with _CHANGING:
                    if _LAYOUTS.get(key) is layouts:
                        _LAYOUTS[key] = (layout, *layouts[:i], *layouts[i + 1:])
            return Walked(dict(layout.found), layout.pixel)
    return None


def _keep(fh: BinaryIO, offset: int, key: tuple[str, int, frozenset[int]],
          walk: _Walk, result: Walked) -> None:
    """Keep the proof of a walk that succeeded (it recorded what it read)."""
    reads = walk.reads
    if not reads:
        return
    span = max(pos + n for pos, n in reads)
    if span > _SPAN_MAX:
        return
    marks = bytearray(span)
    for pos, n in reads:
        marks[pos:pos + n] = b"\xff" * n
    mask = int.from_bytes(marks, "little")
    fh.seek(offset)
    prefix = fh.read(span)
    if len(prefix) < span:
        return
    layout = _Layout(span, mask, int.from_bytes(prefix, "little") & mask,
                     dict(result.found), result.pixel)
    with _CHANGING:
        if key not in _LAYOUTS and len(_LAYOUTS) >= _LAYOUTS_MAX:
            del _LAYOUTS[next(iter(_LAYOUTS))]
        _LAYOUTS[key] = (layout, *_LAYOUTS.get(key, ())[:_LAYOUTS_PER_SIZE - 1])


class _Malformed(Exception):
    """Where and what: raised inside the walk, turned into UnreadableDataset."""

    def __init__(self, what: str, pos: int, tag: int | None = None) -> None:
        super().__init__(what)
        self.what, self.pos, self.tag = what, pos, tag


@dataclass
class Walked:
    """What the walk saw at the top level, so that the header need not be walked again.

    Attributes:
        found: tag -> (VR, or None in Implicit VR; offset of the value; its length) of
            each `wanted` top-level element, offsets counted from the dataset's start.
        pixel: offset of the top-level Pixel Data element, or the dataset's size.
    """

    found: dict[int, tuple[str | None, int, int]]
    pixel: int


def check_dataset(fh: BinaryIO, offset: int, transfer_syntax: str,
                  wanted: Collection[int] = ()) -> Walked | None:
    """Walk the whole dataset that starts at `offset` of `fh` and ends at its end.

    Args:
        fh: the received file, opened for binary reading (it is read, never written).
        offset: where the dataset starts (after the File Meta Information).
        transfer_syntax: the UID the dataset was sent in.
        wanted: top-level tags whose place to report.

    Returns:
        Where the wanted elements and Pixel Data are (None for a Deflated dataset,
        whose offsets are in the inflated stream).

    Raises:
        UnreadableDataset: the bytes are not a well-formed dataset in that syntax; the
            message starts with what is wrong, then the tag and the offset (counted
            from the start of the dataset, or of the inflated stream when Deflated).
        DatasetMismatch: native Pixel Data shorter than its Image Pixel attributes say.
    """
    deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
    if transfer_syntax in _NATIVE:
        implicit, big = _NATIVE[transfer_syntax]
        encapsulated = False
    else:
        implicit, big, encapsulated = False, False, not deflated
    source: _Window = _Inflated(fh, offset) if deflated else _Window(fh, offset)
    tags = frozenset(wanted)
    key = None
    record = False
    if source.size is not None and not deflated:
        key = (transfer_syntax, source.size, tags)
        proven = _proven(fh, offset, key)
        if proven is not None:
            return proven
        # A size seen before: record what this walk reads, to keep its proof.
        record = key in _SEEN
        if not record:
            with _CHANGING:
                if len(_SEEN) >= _SEEN_MAX:
                    del _SEEN[next(iter(_SEEN))]
                _SEEN[key] = None
    walk = _Walk(source, big, encapsulated, tags, record)
    try:
        walk.dataset(0, source.size, implicit, 0)
    except _Malformed as exc:
        where = f" at ({exc.tag >> 16:04X},{exc.tag & 0xFFFF:04X})" if exc.tag is not None else ""
        stream = "inflated offset" if deflated else "offset"
        raise UnreadableDataset(f"{exc.what}{where} {stream} {exc.pos}") from None
    except zlib.error as exc:
        raise UnreadableDataset(f"deflated stream is corrupt: {exc}") from None
    walk.check_pixel_length()
    if deflated:
        return None
    result = Walked(walk.found, walk.pixel_at if walk.pixel_at is not None else
                    os.fstat(fh.fileno()).st_size - offset)
    if key is not None and record:
        _keep(fh, offset, key, walk, result)
    return result


class _Window:
    """A read buffer over the dataset bytes of a file: positions are dataset offsets."""

    def __init__(self, fh: BinaryIO, offset: int) -> None:
        self._fh = fh
        self._offset = offset
        self.size: int | None = os.fstat(fh.fileno()).st_size - offset
        self.buf = b""
        self.start = 0                 # dataset offset of buf[0]

    def load(self, pos: int, n: int) -> None:
        """Make buf hold [pos, pos + n); raise _Malformed when the data ends first."""
        self._fh.seek(self._offset + pos)
        self.buf = self._fh.read(max(n, _CHUNK))
        self.start = pos
        if len(self.buf) < n:
            raise _Malformed("data set ends inside an element header", pos)

    def ends_at(self, pos: int) -> bool:
        """True when the data ends exactly at `pos` (top-level walks know the size)."""
        return pos == self.size


class _Inflated(_Window):
    """The inflated stream of a Deflated dataset, read forward in bounded chunks."""

    def __init__(self, fh: BinaryIO, offset: int) -> None:
        super().__init__(fh, offset)
        fh.seek(offset)
        self.size = None
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._done = False
        self._inflated = 0             # bytes inflated so far
        self._crc = 0                  # their CRC-32, for a trailing gzip trailer

    def _more(self, want: int) -> bytes:
        out = b""
        while len(out) < want and not self._done:
            data = self._z.unconsumed_tail or self._fh.read(_CHUNK)
            if not data:
                raise _Malformed("deflated stream is truncated", self._inflated + len(out))
            out += self._z.decompress(data, max(want - len(out), _CHUNK))
            if self._z.eof:
                self._done = True
                self._check_tail(self._inflated + len(out), out)
        self._inflated += len(out)
        self._crc = zlib.crc32(out, self._crc)
        return out

    def _check_tail(self, total: int, last: bytes) -> None:
        """Only a pad byte, or a gzip trailer (CRC-32, size) that matches, may follow.

        pydicom's image_dfl.dcm ends with such a trailer; dcmdump ignores it. Anything
        else after the stream is garbage.
        """
        rest = self._z.unused_data + self._fh.read(16)
        if len(rest) <= 1 and not rest.strip(b"\0"):
            return
        if len(rest) == 8:
            crc = zlib.crc32(last, self._crc)
            if rest == struct.pack("<II", crc, total & 0xFFFFFFFF):
                return
        raise _Malformed("bytes after the deflated stream", total)

    def load(self, pos: int, n: int) -> None:
        # Forward only: drop what is behind `pos`, inflate (and discard) up to it.
        stop = self.start + len(self.buf)
        if pos >= stop:
            self.start, self.buf = stop, b""
            while self.start < pos:
                got = self._more(min(pos - self.start, 1 << 20))
                if not got:
                    raise _Malformed(f"value runs {pos - self.start} bytes past the end", pos)
                skip = min(len(got), pos - self.start)
                self.start += skip
                self.buf = got[skip:]
        else:
            self.buf = self.buf[pos - self.start:]
            self.start = pos
        if len(self.buf) < n:
            self.buf += self._more(max(n - len(self.buf), _CHUNK))
        if len(self.buf) < n:
            raise _Malformed("data set ends inside an element header", pos)

    def ends_at(self, pos: int) -> bool:
        self.load(pos, 0)
        if not self.buf:
            self.buf = self._more(1)
        return not self.buf


class _Walk:
    """One walk over one dataset; the window is shared by every level."""

    def __init__(self, w: _Window, big: bool, encapsulated: bool,
                 wanted: frozenset[int] = frozenset(), record: bool = False) -> None:
        self.w = w
        # (offset, length) of every byte range read, when a proof is to be kept.
        self.reads: list[tuple[int, int]] | None = [] if record else None
        self.big = big
        self.encapsulated = encapsulated
        self.pixel: dict[int, bytes] = {}
        self.pixel_length: tuple[int, int] | None = None      # (length, pos)
        self.wanted = wanted
        self.found: dict[int, tuple[str | None, int, int]] = {}
        self.pixel_at: int | None = None

    def _header(self, pos: int, n: int) -> tuple[bytes, int]:
        w = self.w
        i = pos - w.start
        if i < 0 or i + n > len(w.buf):
            w.load(pos, n)
            i = 0
        return w.buf, i

    def dataset(self, pos: int, end: int | None, implicit: bool, depth: int,
                undefined_item: bool = False) -> int:
        """Walk elements from `pos` to `end` (a defined-length item, or the end of the
        file at top level), to an Item Delimitation (an undefined-length item), or, in
        an inflated stream, to its end. Returns the position after the last byte.

        The hot loop of the store path: one unpack per element header, the window's
        buffer held in locals, values skipped by arithmetic.
        """
        w = self.w
        big = self.big and not implicit
        head = _HEAD_IMPLICIT if implicit else _HEAD_BE if big else _HEAD_LE
        long_length = _U32_BE if big else _U32_LE
        beyond = "the end" if depth == 0 else "its item"
        opened = _OPENED_TOP | self.wanted if depth == 0 else _OPENED
        vr = b""
        buf, base = w.buf, w.start
        limit = base + len(buf)
        last = -1
        # A file's size is known: compared here, not asked of the window per element.
        size = w.size if type(w) is _Window and w.size is not None else -1
        reads = self.reads
        while True:
            if end is not None:
                if pos == end:
                    if undefined_item:
                        raise _Malformed("item has no delimiter", pos)
                    return pos
                if pos + 8 > end:
                    raise _Malformed(f"element header crosses {beyond}", pos)
            elif not undefined_item and (pos == size if size >= 0 else w.ends_at(pos)):
                return pos
            if pos < base or pos + 12 > limit:
                w.load(pos, 8)
                buf, base = w.buf, w.start
                limit = base + len(buf)
            i = pos - base
            if reads is not None:
                reads.append((pos, 8))
            if implicit:
                group, elem, length = head.unpack_from(buf, i)
                tag = group << 16 | elem
                kind = _SEQUENCE if tag in _SQ_TAGS else _SHORT
                value = pos + 8
            else:
                group, elem, vr, length = head.unpack_from(buf, i)
                tag = group << 16 | elem
                kind = _VR_KIND.get(vr, _INVALID)
                value = pos + 8
            if group == 0xFFFE:
                (length,) = long_length.unpack_from(buf, i + 4)
                if tag == _ITEM_END and undefined_item:
                    if length:
                        raise _Malformed("item delimiter length not 0", pos, tag)
                    return pos + 8
                raise _Malformed("delimiter or item out of place", pos, tag)
            if tag <= last:
                raise _Malformed("tags not in ascending order" if tag < last
                                 else "tag repeated", pos, tag)
            last = tag
            if kind:                                  # a long VR, SQ, or invalid
                if kind == _INVALID:
                    raise _Malformed("invalid VR", pos, tag)
                if not implicit:
                    if pos + 12 > limit:
                        w.load(pos, 12)
                        buf, base = w.buf, w.start
                        limit = base + len(buf)
                        i = 0
                    (length,) = long_length.unpack_from(buf, i + 8)
                    value = pos + 12
                    if reads is not None:
                        reads.append((pos + 8, 4))
            if kind == _SEQUENCE or length == _UNDEFINED or tag in opened:
                if depth == 0 and tag in self.wanted:
                    self.found[tag] = (vr.decode() if vr else None, value, length)
                pos = self._special(tag, kind == _SEQUENCE, implicit and not kind or
                                    vr == b"UN", pos, value, length, end, implicit, depth)
                buf, base = w.buf, w.start
                limit = base + len(buf)
                continue
            pos = value + length
            if end is not None and pos > end:
                raise _Malformed(f"value runs {pos - end} bytes past {beyond}",
                                 value - 8, tag)

    def _special(self, tag: int, sequence: bool, un: bool, pos: int, value: int,
                 length: int, end: int | None, implicit: bool, depth: int) -> int:
        """Sequences, Pixel Data and the Image Pixel values: what is opened, not skipped.

        `un`: an undefined length here holds Implicit VR Little Endian items (an
        implicit-syntax element of unknown VR, or VR UN: CP-246).
        """
        if tag == _PIXEL_DATA and depth == 0:
            self.pixel_at = pos
            return self._pixel_data(tag, pos, value, length)
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA:
                return self._fragments(value, tag)
            if sequence or un:
                return self._sequence(value, None, implicit or un, depth + 1, tag)
            raise _Malformed("undefined length, not a sequence", pos, tag)
        stop = value + length
        if end is not None and stop > end:
            beyond = "the end" if depth == 0 else "its item"
            raise _Malformed(f"value runs {stop - end} bytes past {beyond}", pos, tag)
        if sequence:
            self._sequence(value, stop, implicit, depth + 1, tag)
        elif depth == 0 and tag in _PIXEL_ATTRS:
            self.pixel[tag] = self._value(value, length)
        return stop

    def _value(self, pos: int, length: int) -> bytes:
        if self.reads is not None:
            self.reads.append((pos, min(length, 16)))
        buf, i = self._header(pos, min(length, 16))
        return bytes(buf[i:i + min(length, 16)])

    def _sequence(self, pos: int, end: int | None, implicit: bool, depth: int,
                  tag: int) -> int:
        if depth > _MAX_DEPTH:
            raise _Malformed(f"sequences nested deeper than {_MAX_DEPTH}", pos, tag)
        big = self.big and not implicit
        fmt = ">HHI" if big else "<HHI"
        while True:
            if end is not None:
                if pos == end:
                    return pos
                if pos + 8 > end:
                    raise _Malformed("item crosses its sequence end", pos, tag)
            item, length = self._item(pos, fmt, tag)
            if item == _SEQ_END and end is None:
                return pos + 8
            if item != _ITEM:
                raise _Malformed("sequence holds a non-item", pos, tag)
            if length == _UNDEFINED:
                pos = self.dataset(pos + 8, end, implicit, depth + 1, undefined_item=True)
            else:
                stop = pos + 8 + length
                if end is not None and stop > end:
                    raise _Malformed("item runs past its sequence", pos, tag)
                pos = self.dataset(pos + 8, stop, implicit, depth + 1)

    def _item(self, pos: int, fmt: str, tag: int) -> tuple[int, int]:
        """Tag and length of an item or delimiter header (a delimiter has length 0)."""
        if self.reads is not None:
            self.reads.append((pos, 8))
        buf, i = self._header(pos, 8)
        group, elem, length = struct.unpack_from(fmt, buf, i)
        item = group << 16 | elem
        if item == _SEQ_END and length:
            raise _Malformed("sequence delimiter length not 0", pos, tag)
        return item, length

    def _pixel_data(self, tag: int, pos: int, value: int, length: int) -> int:
        if length == _UNDEFINED:
            if not self.encapsulated:
                raise _Malformed("encapsulated, but syntax is native", pos, tag)
            return self._fragments(value, tag)
        if self.encapsulated:
            raise _Malformed("not encapsulated, syntax says it is", pos, tag)
        self.pixel_length = (length, pos)
        size = self.w.size
        if size is not None and value + length > size:
            raise _Malformed(f"value runs {value + length - size} bytes past the end", pos, tag)
        return value + length

    def _fragments(self, pos: int, tag: int) -> int:
        """Encapsulated Pixel Data (PS3.5 A.4): offset table, fragments, delimiter."""
        first = True
        while True:
            item, length = self._item(pos, "<HHI", tag)
            if item == _SEQ_END and not first:
                return pos + 8
            if item != _ITEM:
                raise _Malformed("fragment is not an item", pos, tag)
            if length == _UNDEFINED:
                raise _Malformed("fragment of undefined length", pos, tag)
            if first and length % 4:
                raise _Malformed("offset table length not multiple of 4", pos, tag)
            first = False
            pos += 8 + length
            if self.w.size is not None and pos > self.w.size:
                raise _Malformed(f"fragment runs {pos - self.w.size} bytes past the end",
                                 pos - length - 8, tag)

    def check_pixel_length(self) -> None:
        """Native Pixel Data must hold Rows x Columns x Samples x Bits x Frames."""
        if self.pixel_length is None or not {_ROWS, _COLUMNS, _BITS} <= self.pixel.keys():
            return
        u16 = ">H" if self.big else "<H"
        try:
            rows, cols, bits = (struct.unpack(u16, self.pixel[t][:2])[0]
                                for t in (_ROWS, _COLUMNS, _BITS))
            samples = (struct.unpack(u16, self.pixel[_SAMPLES][:2])[0]
                       if _SAMPLES in self.pixel else 1)
            frames = int(self.pixel.get(_FRAMES, b"1").strip(b" \0") or b"1")
        except (struct.error, ValueError):
            return     # a malformed value: the header parse reports it, if it matters
        if b"_422" in self.pixel.get(_PHOTOMETRIC, b""):
            samples = 2     # YBR_*_422 stores two samples per pixel (PS3.3 C.7.6.3.1.2)
        expected = (rows * cols * samples * bits * max(frames, 1) + 7) // 8
        length, pos = self.pixel_length
        if length < expected:
            raise DatasetMismatch(f"Pixel Data has {length} bytes, image needs {expected} "
                                  f"at (7FE0,0010) offset {pos}")
