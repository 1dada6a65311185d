"""Transcoding an archived instance for a peer that accepts none of its stored syntaxes.

The stored file is never changed: `convert()` reads it and returns a new dataset in the
target syntax, for one sending. Which conversions exist (`plan()`):

- uncompressed ↔ uncompressed (Explicit/Implicit VR Little Endian, Deflated, Explicit
  VR Big Endian → Little Endian: the byte order of OW/OF/OL/OD/OV values is swapped);
- compressed → uncompressed, decoded by pydicom's pixel handlers (pylibjpeg with its
  libjpeg, openjpeg and rle plugins; pyjpegls for JPEG-LS). A lossy source keeps
  Lossy Image Compression = 01 (PS3.3 C.7.6.1.1.5): decoding never makes it lossless;
- uncompressed → RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless (the encoders
  pydicom has).

Compressed → another compressed syntax goes through the uncompressed pixels.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pacs_server.errors import MissingFile, TranscodeFailed

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
# What we may send when the peer takes neither the stored syntax nor anything else we
# can produce; also the fallbacks C-MOVE proposes beside the stored syntax.
FALLBACKS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
ENCODABLE = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
_ALWAYS_LOSSY = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless)
_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def plan(stored: str, accepted: list[str]) -> str | None:
    """The syntax to send an instance stored as `stored` in, among `accepted` (in the
    peer's order of acceptance), or None when there is no way.

    The stored syntax wins; then an uncompressed one; then a lossless encoding.
    """
    if stored in accepted:
        return stored
    src = UID(stored)
    for ts in accepted:
        if ts in UNCOMPRESSED and (src in UNCOMPRESSED or _decodable(src)):
            return ts
    if src in UNCOMPRESSED or _decodable(src):
        for ts in accepted:
            if ts in ENCODABLE and get_encoder(UID(ts)).is_available:
                return ts
    return None


def _decodable(ts: UID) -> bool:
    if not ts.is_compressed:
        return False
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def convert(path: Path, target: str) -> Dataset:
    """Read the archived file at `path` and return it encoded for `target`.

    Raises:
        MissingFile: the file cannot be read.
        TranscodeFailed: the pixel data cannot be decoded or encoded.
    """
    try:
        ds = dcmread(path)
    except (OSError, EOFError) as exc:
        raise MissingFile(f"{path.name}: {exc}") from None
    except Exception as exc:  # pydicom raises assorted errors on a damaged file
        raise TranscodeFailed(f"cannot read the stored file: {exc}") from None
    source = UID(ds.file_meta.TransferSyntaxUID)
    dest = UID(target)
    lossy = _is_lossy(source, ds)
    try:
        # Every element decoded now: raw elements keep the encoding they were read in
        # (an Implicit VR element has no VR to write as Explicit).
        for _ in ds.iterall():
            pass
        if source.is_compressed:
            ds.decompress(generate_instance_uid=False)
        elif source == ExplicitVRBigEndian:
            _swap_to_little_endian(ds)
        if not dest.is_implicit_VR:
            correct_ambiguous_vr(ds, True)
        if dest.is_compressed:
            ds.compress(dest, generate_instance_uid=False)
    except Exception as exc:  # codec errors come in many types
        raise TranscodeFailed(f"{source.name} -> {dest.name}: {exc}") from None
    if lossy:
        ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = dest
    ds.set_original_encoding(dest.is_implicit_VR, dest.is_little_endian,
                             ds.original_character_set)
    return ds


def lossy_syntax(ts: str) -> bool:
    """A syntax whose pixels may be lossy without the instance saying so (JPEG 2000
    counted, since only Lossy Image Compression tells its two modes apart)."""
    return ts in _ALWAYS_LOSSY or ts == JPEG2000


def _is_lossy(ts: UID, ds: Dataset) -> bool:
    """Lossy if the instance says so, or its syntax is lossy by definition (JPEG 2000
    and HTJ2K may be either: for them the attribute decides)."""
    if str(ds.get("LossyImageCompression", "")).strip() == "01":
        return True
    return ts in _ALWAYS_LOSSY


def _swap_to_little_endian(ds: Dataset) -> None:
    """Big Endian → Little Endian: pydicom re-encodes numbers on write, but the raw
    values of OW/OF/OL/OD/OV elements keep the byte order they were read in."""
    for elem in ds.iterall():
        width = _SWAP.get(elem.VR)
        value = elem.value
        if width and isinstance(value, bytes) and len(value) % width == 0:
            elem.value = _swap(value, width)


def _swap(data: bytes, width: int) -> bytes:
    import numpy as np

    dtype = {2: ">u2", 4: ">u4", 8: ">u8"}[width]
    return np.frombuffer(data, dtype=dtype).astype(dtype.replace(">", "<")).tobytes()
