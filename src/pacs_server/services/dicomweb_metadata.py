"""WADO-RS metadata (PS3.18 10.4.1.1.2): DICOM JSON (PS3.18 F.2) of stored instances, bulk
data replaced by BulkDataURIs, and the series cache every viewer's hot path reads.

A series' JSON is built on first request from the stored files (header read, pixel data
never loaded) and kept gzipped under `<archive>/.cache/dicomweb/`, where every node
sharing the archive finds it. Its name carries the series' version from the index (its
instance count and newest row id), so a new, replaced or removed instance makes a new
name: no invalidation message is needed, and a warm request costs one small query and
one file read.

BulkDataURIs are relative references (RFC 3986 5.2), so they resolve through any
reverse proxy: `instances/{sop}/bulk/{tag}` against the series' metadata URL (the form
OHIF resolves by default), `series/{uid}/instances/...` at study level, `bulk/{tag}` at
instance level.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from pacs_server.errors import MissingFile
from pacs_server.index.records import StoredRef
from pacs_server.services.dicomweb_json import dataset_json
from pacs_server.storage.filestore import CACHE

BULK_THRESHOLD = 1024                 # larger binary values are sent as BulkDataURIs
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_PIXEL_DATA = "7FE00010"


def instance_json(path: Path, prefix: str) -> dict[str, Any]:
    """The DICOM JSON of one stored file; top-level bulk data as `{prefix}bulk/{tag}`.

    Pixel Data is never read: the header is parsed up to it, and the element is listed
    with its URI when the file goes on past the header.
    """
    try:
        with open(path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True)
            more = fh.tell() < os.fstat(fh.fileno()).st_size
    except (OSError, EOFError) as exc:
        raise MissingFile(f"{path.name}: {exc}") from None
    # Bulk values inline first (nested ones stay inline); top-level ones are replaced.
    out = dataset_json(ds)
    for key, elem in list(out.items()):
        if elem.get("vr") in _BINARY_VRS and len(elem.get("InlineBinary", "")) > \
                BULK_THRESHOLD * 4 // 3:
            out[key] = {"vr": elem["vr"], "BulkDataURI": f"{prefix}bulk/{key}"}
    if more and "Rows" in ds:
        compressed = ds.file_meta.TransferSyntaxUID.is_compressed
        vr = "OB" if compressed or int(ds.get("BitsAllocated", 8) or 8) <= 8 else "OW"
        out[_PIXEL_DATA] = {"vr": vr, "BulkDataURI": f"{prefix}bulk/{_PIXEL_DATA}"}
    return dict(sorted(out.items()))




class MetadataCache:
    """Gzipped series metadata under the archive (`<root>/.cache/dicomweb`), one file per
    series and version (`IndexRepository.series_version`: instance count and newest row)."""

    def __init__(self, root: Path) -> None:
        self.directory = root / CACHE / "dicomweb"

    def _file(self, series_uid: str, version: tuple[int, int]) -> Path:
        return self.directory / f"{series_uid}.{version[0]}-{version[1]}.json.gz"

    def cached(self, series_uid: str, version: tuple[int, int]) -> bytes | None:
        """The cached gzipped JSON of this version of the series (a checked UID), if any."""
        try:
            return self._file(series_uid, version).read_bytes()
        except OSError:
            return None

    def build(self, series_uid: str, version: tuple[int, int], refs: list[StoredRef],
              path_of: Callable[[StoredRef], Path]) -> bytes:
        """Build the series' metadata from its files, cache it, return it gzipped.
        Runs in a worker thread."""
        body = json.dumps([instance_json(path_of(r), f"instances/{r.sop_instance_uid}/")
                           for r in refs],
                          separators=(",", ":"), ensure_ascii=False).encode()
        packed = gzip.compress(body, compresslevel=5)
        self._store(series_uid, self._file(series_uid, version), packed)
        return packed

    def _store(self, series_uid: str, cached: Path, packed: bytes) -> None:
        """Write atomically (another node may read it meanwhile), then drop the stale
        versions of the series. A cache that cannot be written only costs speed."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(packed)
            os.replace(tmp, cached)
            for old in self.directory.glob(f"{series_uid}.*.json.gz"):
                if old != cached:
                    old.unlink(missing_ok=True)
        except OSError:
            pass


def study_prefixed(series_json: bytes, series_uid: str) -> bytes:
    """Series metadata (plain JSON) with its URIs made relative to the study URL."""
    return series_json.replace(b'"BulkDataURI":"instances/',
                               f'"BulkDataURI":"series/{series_uid}/instances/'.encode())
