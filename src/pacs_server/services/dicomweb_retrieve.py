"""WADO-RS reads (PS3.18 10.4): which stored files a URL selects, and what of them is
sent: the file as stored (streamed by the web side), the instance in another transfer
syntax (`services/transcode.py`, the C-GET path), frames and bulk data.

Blocking functions (`encoded`, `frames`, `bulk`) run in a worker thread
(`asyncio.to_thread`); `select` runs on the loop (index).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs_server.errors import InvalidQuery, MissingFile, NotFound, TranscodeFailed
from pacs_server.index.records import StoredRef
from pacs_server.services import transcode
from pacs_server.services.query import FindRequest, QueryKey, QueryService
from pacs_server.storage.filestore import FileStore
from pacs_server.values import is_uid

__all__ = ["DicomWebRetrieve", "check_uid", "selected_syntax"]

_UID_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E,
             "SOPInstanceUID": 0x00080018}
_LEVEL = {"StudyInstanceUID": "STUDY", "SeriesInstanceUID": "SERIES",
          "SOPInstanceUID": "IMAGE"}


def check_uid(uid: str, what: str = "UID") -> str:
    """A UID from a URL, checked before it reaches SQL or a path.

    Raises:
        InvalidQuery: not a UID (PS3.5 9.1), 400.
    """
    if not is_uid(uid):
        raise InvalidQuery(f"{what}: {uid[:70]!r} is not a UID")
    return uid


def selected_syntax(requested: str, stored: str) -> str:
    """The transfer syntax to send: `*` = as stored; none requested = Explicit VR Little
    Endian unless the stored pixels are lossy (PS3.18 8.7.3.4); else the requested one."""
    if requested == "*" or requested == stored:
        return stored
    if not requested:
        return stored if transcode.lossy_syntax(stored) else ExplicitVRLittleEndian
    return requested


class DicomWebRetrieve:
    """The stored instances under a study / series / instance URL."""

    def __init__(self, queries: QueryService, files: FileStore) -> None:
        self._queries = queries
        self._files = files

    async def select(self, **uids: str) -> list[StoredRef]:
        """Stored instances under the entity the UIDs name (StudyInstanceUID, then
        optionally SeriesInstanceUID and SOPInstanceUID), in archive order.

        Raises:
            InvalidQuery: a malformed UID (400). NotFound: nothing stored there (404).
        """
        keys = []
        level = "STUDY"
        for keyword, value in uids.items():
            check_uid(value, keyword)
            keys.append(QueryKey(_UID_TAGS[keyword], keyword, "UI", value))
            level = _LEVEL[keyword]
        refs = await self._queries.resolve(FindRequest("STUDY", level, tuple(keys)))
        if not refs:
            raise NotFound(f"no {level.lower().replace('image', 'instance')} "
                           f"{next(reversed(uids.values()))}")
        return refs

    def path(self, ref: StoredRef) -> Path:
        return self._files.path(ref.path)

    # ----------------------------------------------------------- worker thread side
    def encoded(self, ref: StoredRef, target: str) -> bytes:
        """The instance as a Part-10 file in `target` (converted; the stored file is
        never changed).

        Raises:
            TranscodeFailed: no conversion from the stored syntax to `target`.
        """
        if transcode.plan(ref.transfer_syntax_uid, [target]) is None:
            raise TranscodeFailed(f"cannot convert {UID(ref.transfer_syntax_uid).name} "
                                  f"to {UID(target).name}")
        ds = transcode.convert(self.path(ref), target)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def frames_all(self, ref: StoredRef, target: str) -> tuple[list[bytes], str]:
        """Every frame of the instance (Pixel Data as bulk data), see `frames`."""
        return self.frames(ref, None, target)

    def frames(self, ref: StoredRef, numbers: Iterable[int] | None,
               target: str) -> tuple[list[bytes], str]:
        """Frames (1-based; None = all) of the instance and the syntax they are in: as
        stored when `target` is the stored syntax, else decoded to native little endian.

        Raises:
            NotFound: a frame number beyond Number of Frames, or no pixel data.
            TranscodeFailed: the stored pixels cannot be decoded.
        """
        stored = ref.transfer_syntax_uid
        if target != stored:
            if UID(target) not in transcode.UNCOMPRESSED or not UID(target).is_little_endian:
                raise TranscodeFailed(f"frames are sent as stored or uncompressed little "
                                      f"endian, not {UID(target).name}")
            ds = transcode.convert(self.path(ref), ExplicitVRLittleEndian)
            syntax: str = ExplicitVRLittleEndian
        else:
            ds = _read(self.path(ref))
            syntax = stored
        if "PixelData" not in ds:
            raise NotFound(f"instance {ref.sop_instance_uid} has no pixel data")
        count = int(ds.get("NumberOfFrames") or 1)
        wanted = list(numbers) if numbers is not None else list(range(1, count + 1))
        for n in wanted:
            if not 1 <= n <= count:
                raise NotFound(f"frame {n}: the instance has {count} frame(s)")
        if UID(syntax).is_encapsulated:
            frames = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [frames[n - 1] for n in wanted], syntax
        size = _frame_bytes(ds)
        data = ds.PixelData
        return [bytes(data[(n - 1) * size:n * size]) for n in wanted], syntax

    def bulk(self, ref: StoredRef, tag: int) -> bytes:
        """The value of one top-level element (its bytes as stored for Pixel Data).

        Raises:
            NotFound: the instance has no such element.
        """
        ds = _read(self.path(ref))
        if tag not in ds:
            raise NotFound(f"instance {ref.sop_instance_uid} has no element {tag:08X}")
        elem = ds[tag]
        value = elem.value
        if isinstance(value, bytes):
            return value
        raise NotFound(f"element {tag:08X} is not bulk data")


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (OSError, EOFError) as exc:
        raise MissingFile(f"{path.name}: {exc}") from None


def _frame_bytes(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    if bits == 1:
        raise TranscodeFailed("single-bit frames are not split (send the whole bulk data)")
    return pixels * bits // 8

