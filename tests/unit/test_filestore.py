"""storage/filestore.py: .part in .incoming, fsync, atomic rename, cleanup at start."""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from pacs_server.errors import StartupError, StorageFull, StorageUnavailable
from pacs_server.storage.filestore import INCOMING, JOURNAL, FileStore, storage_errors

OLD_S = time.time() - 3600


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    fs = FileStore(tmp_path / "archive")
    assert fs.prepare() == 0
    return fs


def source_file(tmp_path: Path, data: bytes) -> io.BufferedReader:
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return open(path, "rb")  # noqa: SIM115  (closed by the caller)


def test_prepare_creates_root_and_incoming(tmp_path: Path) -> None:
    fs = FileStore(tmp_path / "a" / "b" / "archive")
    assert fs.prepare() == 0
    assert fs.incoming.is_dir()
    assert fs.incoming == fs.root / INCOMING
    assert list(fs.incoming.iterdir()) == []  # the write probe is gone


def test_prepare_removes_leftovers_of_a_crash(store: FileStore) -> None:
    (store.incoming / "abc.part").write_bytes(b"half a file")
    (store.incoming / "def.part").write_bytes(b"")
    (store.incoming / "tmpx1y2.dcm").write_bytes(b"pynetdicom receive buffer")
    kept = store.root / "PAT" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"archived")
    assert store.prepare() == 3
    assert list(store.incoming.iterdir()) == []
    assert kept.read_bytes() == b"archived"


def test_prepare_fails_when_root_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(StartupError, match="is not writable"):
        FileStore(blocker / "archive").prepare()
    with pytest.raises(StartupError, match="is not writable"):
        FileStore(blocker).prepare()


def test_write_part_copies_header_and_range(tmp_path: Path, store: FileStore) -> None:
    data = bytes(range(256)) * 40
    with source_file(tmp_path, data) as src:
        part = store.write_part(b"HEADER", src, 100, 5000)
    assert part.parent == store.incoming
    assert part.suffix == ".part"
    assert part.read_bytes() == b"HEADER" + data[100:5100]


def test_write_part_length_zero(tmp_path: Path, store: FileStore) -> None:
    with source_file(tmp_path, b"abc") as src:
        part = store.write_part(b"H", src, 3, 0)
    assert part.read_bytes() == b"H"


def test_write_part_from_a_short_source_leaves_nothing(tmp_path: Path, store: FileStore) -> None:
    with source_file(tmp_path, b"0123456789") as src, pytest.raises(StorageUnavailable):
        store.write_part(b"H", src, 5, 100)
    assert list(store.incoming.iterdir()) == []


def test_place_is_an_atomic_move_into_new_directories(tmp_path: Path,
                                                      store: FileStore) -> None:
    with source_file(tmp_path, b"dataset") as src:
        part = store.write_part(b"meta", src, 0, 7)
    rel = PurePosixPath("PAT", "1.2", "1.2.3", "1.2.3.4.dcm")
    final = store.place(part, rel)
    assert final == store.root / rel
    assert final.read_bytes() == b"metadataset"
    assert not part.exists()
    assert list(store.incoming.iterdir()) == []
    assert store.exists(rel)


def test_place_replaces_an_existing_file(tmp_path: Path, store: FileStore) -> None:
    rel = PurePosixPath("flat.dcm")
    for content in (b"first", b"second"):
        with source_file(tmp_path, content) as src:
            store.place(store.write_part(b"", src, 0, len(content)), rel)
    assert store.path(rel).read_bytes() == b"second"
    assert [p.name for p in store.root.iterdir() if p.name not in (INCOMING, JOURNAL)] == [
        "flat.dcm"]


def test_place_under_a_file_is_storage_unavailable(tmp_path: Path, store: FileStore) -> None:
    (store.root / "PAT").write_bytes(b"not a directory")
    with source_file(tmp_path, b"x") as src:
        part = store.write_part(b"", src, 0, 1)
    with pytest.raises(StorageUnavailable, match="archive write failed"):
        store.place(part, PurePosixPath("PAT", "1.2", "1.2.3.dcm"))
    # the caller discards the part; discard is quiet and idempotent
    store.discard(part)
    store.discard(part)
    store.discard(None)
    assert list(store.incoming.iterdir()) == []


@pytest.mark.parametrize("rel", ["../outside.dcm", "a/../../outside.dcm", "/etc/passwd", ".",
                                 "", "a/.."])
def test_path_refuses_to_leave_the_root(store: FileStore, rel: str) -> None:
    with pytest.raises(StorageUnavailable, match="outside the archive"):
        store.path(rel)


def test_path_refuses_a_symlink_out_of_the_root(tmp_path: Path, store: FileStore) -> None:
    (store.root / "link").symlink_to(tmp_path)
    with pytest.raises(StorageUnavailable):
        store.path("link/escape.dcm")


def test_remove_prunes_empty_parents_but_not_the_root(tmp_path: Path, store: FileStore) -> None:
    rel_a = PurePosixPath("PAT", "1.2", "1.2.3", "a.dcm")
    rel_b = PurePosixPath("PAT", "1.2", "1.2.4", "b.dcm")
    for rel in (rel_a, rel_b):
        with source_file(tmp_path, b"x") as src:
            store.place(store.write_part(b"", src, 0, 1), rel)
    store.remove(rel_a)
    assert not (store.root / "PAT" / "1.2" / "1.2.3").exists()
    assert (store.root / rel_b).exists()
    store.remove(rel_b)
    assert not (store.root / "PAT").exists()
    assert store.root.is_dir() and store.incoming.is_dir()
    store.remove(rel_b)  # already gone: fine


def test_usage_ignores_incoming(tmp_path: Path, store: FileStore) -> None:
    with source_file(tmp_path, b"12345") as src:
        store.place(store.write_part(b"", src, 0, 5), PurePosixPath("a.dcm"))
    (store.incoming / "x.part").write_bytes(b"0" * 1000)
    assert store.usage() == (1, 5)
    assert store.free_bytes() > 0


@pytest.mark.parametrize(("err", "expected"), [
    (errno.ENOSPC, StorageFull),
    (errno.EDQUOT, StorageFull),
    (errno.EACCES, StorageUnavailable),
    (errno.EROFS, StorageUnavailable),
    (errno.EIO, StorageUnavailable),
])
def test_storage_errors_translation(err: int, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, storage_errors():
        raise OSError(err, os.strerror(err))
    assert os.strerror(err) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_storage_errors_lets_other_exceptions_through() -> None:
    with pytest.raises(ValueError), storage_errors():
        raise ValueError("not an OS error")


def test_place_new_creates_only_when_free(tmp_path: Path, store: FileStore) -> None:
    rel = PurePosixPath("PAT", "1.2", "1.2.3", "1.2.3.4.dcm")
    with source_file(tmp_path, b"first") as src:
        first = store.write_part(b"", src, 0, 5)
    assert store.place_new(first, rel) is True
    assert not first.exists()
    with source_file(tmp_path, b"second") as src:
        second = store.write_part(b"", src, 0, 6)
    assert store.place_new(second, rel) is False
    assert store.path(rel).read_bytes() == b"first", "an existing file is never replaced"
    assert second.exists(), "the caller decides what to do with the part"
    store.discard(second)
    assert list(store.incoming.iterdir()) == []


def test_place_new_under_a_file_is_storage_unavailable(tmp_path: Path,
                                                       store: FileStore) -> None:
    (store.root / "PAT").write_bytes(b"in the way")
    with source_file(tmp_path, b"x") as src:
        part = store.write_part(b"", src, 0, 1)
    with pytest.raises(StorageUnavailable):
        store.place_new(part, PurePosixPath("PAT", "1.2", "x.dcm"))


def _fsynced_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    from pacs_server.storage import filestore

    synced: list[Path] = []
    real = filestore.fsync_dir
    monkeypatch.setattr(filestore, "fsync_dir", lambda d: (synced.append(d), real(d)))
    return synced


@pytest.mark.parametrize("method", ["place_new", "place"])
def test_a_series_directory_removed_by_another_process_is_made_again(
        tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch,
        method: str) -> None:
    # The placement directory is checked and made once, then kept (FileStore._placing);
    # another node may prune it meanwhile: the next placement makes it again, durably.
    series = PurePosixPath("PAT", "1.2", "1.2.3")
    for name in ("a.dcm", "b.dcm"):
        with source_file(tmp_path, b"x") as src:
            getattr(store, method)(store.write_part(b"", src, 0, 1), series / name)
    synced = _fsynced_dirs(monkeypatch)
    for name in ("a.dcm", "b.dcm"):
        os.unlink(store.root / series / name)
    os.rmdir(store.root / series)             # behind this FileStore's back
    with source_file(tmp_path, b"y") as src:
        getattr(store, method)(store.write_part(b"", src, 0, 1), series / "c.dcm")
    assert (store.root / series / "c.dcm").read_bytes() == b"y"
    # the new entry, and the new directory's entry in its parent
    assert synced == [store.root / series, store.root / series.parent]
    assert list(store.incoming.iterdir()) == []


def test_a_directory_reached_through_a_symlink_is_checked_every_time(
        tmp_path: Path, store: FileStore) -> None:
    (tmp_path / "elsewhere").mkdir()
    (store.root / "PAT").mkdir()
    (store.root / "PAT" / "inside").mkdir()
    (store.root / "LINKED").symlink_to(store.root / "PAT" / "inside")
    with source_file(tmp_path, b"x") as src:
        assert store.place_new(store.write_part(b"", src, 0, 1),
                               PurePosixPath("LINKED", "a.dcm"))
    assert (store.root / "PAT" / "inside" / "a.dcm").exists()
    (store.root / "LINKED").unlink()
    (store.root / "LINKED").symlink_to(tmp_path / "elsewhere")
    with source_file(tmp_path, b"x") as src:
        part = store.write_part(b"", src, 0, 1)
    with pytest.raises(StorageUnavailable, match="outside the archive"):
        store.place_new(part, PurePosixPath("LINKED", "b.dcm"))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_sweep_incoming_removes_only_stale_files(store: FileStore) -> None:
    store.prepare()
    stale = store.incoming / "stale.dcm"
    fresh = store.incoming / "fresh.dcm"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert store.sweep_incoming(600) == 1
    assert not stale.exists() and fresh.exists()


def test_journal_intents_until_closed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "archive")
    store.prepare()
    rels = [PurePosixPath(f"P/{n}/x.dcm") for n in range(40)]
    intents: list[Path] = []
    lock = threading.Lock()

    def announce(chunk: list[PurePosixPath]) -> None:
        for rel in chunk:
            made = store.journal.open(rel)          # fsynced, shared between threads
            with lock:
                intents.append(made)

    threads = [threading.Thread(target=announce, args=(rels[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(target for _, target in store.journal.pending()) == sorted(map(str, rels))
    for made in intents[:30]:
        store.journal.close(made)
    assert len(store.journal.pending()) == 10
    store.prepare()                                  # a restart keeps open intents
    assert len(store.journal.pending()) == 10


def test_an_intent_is_a_hard_link_to_the_staged_file(tmp_path: Path) -> None:
    """With the staged file given, the intent is one more name for it (no inode made or
    freed per store) whose name carries the path; a path too long for a name falls back
    to a symbolic link. Both are read back the same way, by this process and others."""
    a, b = (FileStore(tmp_path / "archive", fsync=False, identity=n) for n in ("a", "b"))
    for fs in (a, b):
        fs.prepare()
    part = a.incoming / "x.dcm"
    part.write_bytes(b"data")
    os.utime(part, (OLD_S, OLD_S))          # received long ago: the intent is still new
    rel = PurePosixPath("P-1/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    long_rel = PurePosixPath("P", "1." * 60 + "1", "2." * 60 + "2", "3." * 40 + "3.dcm")
    short, long = a.journal.open(rel, part), a.journal.open(long_rel, part)
    assert short.stat(follow_symlinks=False).st_ino == part.stat().st_ino
    assert "/" not in short.name and long.is_symlink()
    assert sorted(a.journal.pending()) == sorted([(short, str(rel)), (long, str(long_rel))])
    assert b.journal.in_flight(rel, 60) and b.journal.in_flight(long_rel, 60)
    assert b.journal.stale(60) == []
    a.journal.close(short)
    a.journal.close(long)
    assert a.journal.pending() == [] and not b.journal.in_flight(rel, 60)
    assert part.read_bytes() == b"data"     # closing an intent leaves the file


def test_a_name_in_the_journal_that_is_no_intent_announces_nothing(store: FileStore) -> None:
    (store.journal.directory / "0123.abc.P+x.dcm").write_bytes(b"")  # digest mismatch
    assert store.journal.pending() == [(store.journal.directory / "0123.abc.P+x.dcm", "")]


def test_quarantine_keeps_the_relative_path(store: FileStore) -> None:
    rel = PurePosixPath("P/study/series/bad.dcm")
    store.path(rel).parent.mkdir(parents=True)
    store.path(rel).write_bytes(b"not dicom")
    moved = store.quarantine(rel)
    assert moved == store.root / ".quarantine" / rel and moved.read_bytes() == b"not dicom"
    assert not (store.root / "P").exists()          # emptied directories pruned


def test_a_path_claim_is_one_process_s_until_released_or_stale(tmp_path: Path) -> None:
    """PathClaims (duplicate_policy: replace): one holder per path across processes; a
    claim older than its bound is broken; a start drops its own identity's claims."""
    a, b = (FileStore(tmp_path / "archive", fsync=False, identity=n) for n in ("a", "b"))
    for store in (a, b):
        store.prepare()
    rel = PurePosixPath("P/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    held = a.claims.take(rel, 60)
    assert held is not None
    assert b.claims.take(rel, 60) is None
    assert a.claims.take(PurePosixPath("other.dcm"), 60) is not None
    a.claims.release(held)
    taken = b.claims.take(rel, 60)
    assert taken is not None
    old = time.time() - 3600
    os.utime(taken, (old, old), follow_symlinks=False)      # b died holding it
    assert a.claims.take(rel, 60) is not None
    assert sorted(os.readlink(p) for p in a.claims.directory.iterdir()) == ["a", "a"]
    a.prepare()                                              # a's next start
    assert list(a.claims.directory.iterdir()) == []


def test_place_new_without_hard_links_renames_without_replacing(
        tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    rel = PurePosixPath("PAT", "1.2", "1.2.3", "a.dcm")
    with source_file(tmp_path, b"first") as src:
        first = store.write_part(b"", src, 0, 5)
    assert store.place_new(first, rel) is True
    assert not first.exists() and store.path(rel).read_bytes() == b"first"
    with source_file(tmp_path, b"second") as src:
        second = store.write_part(b"", src, 0, 6)
    assert store.place_new(second, rel) is False
    assert second.exists() and store.path(rel).read_bytes() == b"first"
