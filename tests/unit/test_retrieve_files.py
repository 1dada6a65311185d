"""RetrieveService.files: the same path and presence as path() + is_file(), with each
directory resolved once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_server.errors import StorageUnavailable
from pacs_server.services.retrieve import RetrieveService, StoredRef
from pacs_server.storage.filestore import FileStore


def ref(path: str) -> StoredRef:
    return StoredRef("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", path, 1)


@pytest.fixture
def service(tmp_path: Path) -> RetrieveService:
    root = tmp_path / "archive"
    (root / "P" / "ST" / "SE").mkdir(parents=True)
    for name in ("a.dcm", "b.dcm"):
        (root / "P" / "ST" / "SE" / name).write_bytes(b"x")
    (root / "flat.dcm").write_bytes(b"x")
    (tmp_path / "outside.dcm").write_bytes(b"x")
    (root / "P" / "ST" / "SE" / "link.dcm").symlink_to(tmp_path / "outside.dcm")
    return RetrieveService(None, FileStore(root, fsync=False))  # type: ignore[arg-type]


def test_files_match_path_and_is_file(service: RetrieveService) -> None:
    refs = [ref(p) for p in ("P/ST/SE/a.dcm", "P/ST/SE/gone.dcm", "P/ST/SE/b.dcm",
                             "flat.dcm", "P/ST/SE/..", "P/ST/missing-dir/c.dcm")]
    got = list(service.files(refs))
    assert [(r, p, present) for r, p, present in got] == \
        [(r, service.path(r), service.path(r).is_file()) for r in refs]
    assert [present for _, _, present in got] == [True, False, True, True, False, False]


def test_a_link_out_of_the_archive_is_refused(service: RetrieveService) -> None:
    files = service.files([ref("P/ST/SE/a.dcm"), ref("P/ST/SE/link.dcm")])
    assert next(files)[2]
    with pytest.raises(StorageUnavailable):
        next(files)
