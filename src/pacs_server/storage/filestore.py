"""Atomic, durable file operations under the archive root.

The write protocol (PS: "an acknowledged C-STORE is on disk"):
  1. write the Part-10 file into <root>/.incoming/<random>.part and fsync it;
  2. os.replace() it to its final name and fsync the directory (and any directory we
     created on the way, so the new entry itself survives a crash);
  3. only then may the caller commit the index row and acknowledge.
A crash leaves at most a *.part file in .incoming, which `prepare()` removes at start,
or a placed file whose index row was never committed: every placement is announced in
the `PlacementJournal` (<root>/.journal) first, so the start-up reconciliation
(services/reconcile.py) finds those without walking the archive.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pacs_server.errors import StartupError, StorageFull, StorageUnavailable

INCOMING = ".incoming"
JOURNAL = ".journal"
QUARANTINE = ".quarantine"
_PRIVATE_DIRS = (INCOMING, JOURNAL, QUARANTINE)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def storage_errors() -> Iterator[None]:
    """Translate OSErrors from the archive filesystem into domain errors."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            raise StorageFull(f"archive filesystem is full: {exc.strerror}") from exc
        raise StorageUnavailable(f"archive write failed: {exc.strerror or exc}") from exc


class FileStore:
    """Files under one root directory; every path is relative and built by `layout`."""

    def __init__(self, root: str | Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.incoming = self.root / INCOMING
        self.journal = PlacementJournal(self.root / JOURNAL, fsync)
        self._fsync = fsync

    # -- lifecycle ------------------------------------------------------------------
    def prepare(self, clean_incoming: bool = True) -> int:
        """Create the root, check it is writable, and remove leftovers of a crash.

        Returns the number of stale partial files removed. A worker process starting
        next to live siblings passes `clean_incoming=False`: their transfers are in
        .incoming, and the age-based sweep (`sweep_incoming`) takes a dead one's files.
        """
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
            self.journal.directory.mkdir(exist_ok=True)
            probe = self.incoming / f"probe-{uuid.uuid4().hex}"
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StartupError(f"storage directory {self.root} is not writable: "
                               f"{exc.strerror or exc}") from None
        removed = 0
        for leftover in self.incoming.iterdir() if clean_incoming else ():
            try:
                leftover.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def sweep_incoming(self, max_age_s: float) -> int:
        """Remove receive files nobody has written to for `max_age_s` seconds.

        A sender that drops mid-transfer leaves pynetdicom's partial file behind (no
        handler runs for it); a live transfer touches its file with every fragment.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        try:
            entries = list(os.scandir(self.incoming))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed

    # -- writing --------------------------------------------------------------------
    def new_part_path(self) -> Path:
        """A fresh temporary name in .incoming (same filesystem as the archive)."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def write_part(self, header: bytes, source: BinaryIO, offset: int, length: int) -> Path:
        """Write `header` then `length` bytes of `source` from `offset` into a new .part file.

        The copy is done by the kernel (copy_file_range/sendfile) where possible, so a
        large instance never passes through Python memory. The file is fsynced.
        """
        part = self.new_part_path()
        with storage_errors():
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, header)
                _copy_range(source.fileno(), fd, offset, length)
                if self._fsync:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                _unlink_quietly(part)
                raise
            os.close(fd)
        return part

    def place(self, part: Path, rel: PurePosixPath) -> Path:
        """Atomically move a fsynced .part file to its final name and make that durable."""
        final = self.path(rel)
        with storage_errors():
            created = self._makedirs(final.parent)
            os.replace(part, final)
            self._sync_new_entry(final, created)
        return final

    def place_new(self, part: Path, rel: PurePosixPath) -> bool:
        """Move a fsynced .part file to its final name only if that name is free.

        os.link() creates the name atomically or fails with EEXIST, so two writers can
        never both believe they created the file. Returns False (part left in place)
        when a file already exists there.
        """
        final = self.path(rel)
        with storage_errors():
            created = self._makedirs(final.parent)
            try:
                os.link(part, final)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                # Filesystem without hard links: check, then rename (callers hold a
                # per-UID claim, so nobody races us for this name).
                if final.exists():
                    return False
                os.replace(part, final)
            else:
                os.unlink(part)
            self._sync_new_entry(final, created)
        return True

    def _sync_new_entry(self, final: Path, created: list[Path]) -> None:
        """fsync the directory of a newly named file and of each directory created for
        it, so that the name itself survives a crash."""
        if self._fsync:
            _fsync_dir(final.parent)
            for d in created:
                _fsync_dir(d.parent)

    def discard(self, part: Path | None) -> None:
        """Remove a .part file that will not be placed."""
        if part is not None:
            _unlink_quietly(part)

    def remove(self, rel: PurePosixPath | str) -> None:
        """Delete an archived file (best effort) and prune empty parent directories."""
        path = self.path(rel)
        _unlink_quietly(path)
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def quarantine(self, rel: PurePosixPath | str) -> Path:
        """Move an archived file that cannot be indexed to <root>/.quarantine/<rel>."""
        source = self.path(rel)
        target = self.root / QUARANTINE / PurePosixPath(rel)
        if target.exists():
            target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
        with storage_errors():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        self.remove(rel)          # prunes the emptied directories
        return target

    # -- reading --------------------------------------------------------------------
    def path(self, rel: PurePosixPath | str) -> Path:
        """Absolute path of a relative archive path; refuses anything that escapes root."""
        final = (self.root / rel).resolve()
        if not final.is_relative_to(self.root) or final == self.root:
            raise StorageUnavailable(f"refusing path outside the archive: {rel}")
        return final

    def exists(self, rel: PurePosixPath | str) -> bool:
        return self.path(rel).is_file()

    def usage(self) -> tuple[int, int]:
        """(files, bytes) under the root, its private directories excluded; walks the tree."""
        files = size = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d not in _PRIVATE_DIRS]
            for name in filenames:
                try:
                    size += os.stat(os.path.join(dirpath, name)).st_size
                    files += 1
                except OSError:
                    pass
        return files, size

    def free_bytes(self) -> int:
        """Bytes this process may still write on the archive's filesystem (f_bavail)."""
        return shutil.disk_usage(self.root).free

    def _makedirs(self, directory: Path) -> list[Path]:
        created: list[Path] = []
        todo = []
        d = directory
        while not d.exists():
            todo.append(d)
            d = d.parent
        for d in reversed(todo):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                pass
        return created


class PlacementJournal:
    """Placements announced but not yet indexed: one intent per in-flight store.

    An intent is a symbolic link <root>/.journal/<random> whose target is the relative
    path being placed: created in one system call with its content, durable with one
    fsync of the journal directory, and that fsync is shared by every store in flight
    (group commit, like the index writer's). It is written before the file is placed
    and removed (without fsync) once the index row is committed or the placement
    undone; a crash in between leaves it for the reconciliation at start.
    """

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        self._fsync = fsync
        self._cond = threading.Condition()
        self._written = 0          # intents created (counted after the symlink exists)
        self._synced = 0           # intents known to be durable
        self._syncing = False

    def open(self, rel: PurePosixPath) -> Path:
        """Announce that `rel` is about to be placed; durable when this returns."""
        intent = self.directory / uuid.uuid4().hex
        with storage_errors():
            os.symlink(str(rel), intent)
            if self._fsync:
                self._sync()
        return intent

    def close(self, intent: Path | None) -> None:
        """The placement is indexed or undone: forget it (a lost unlink is harmless)."""
        if intent is not None:
            _unlink_quietly(intent)

    def pending(self) -> list[tuple[Path, str]]:
        """Every open intent and the relative path it announces."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            try:
                out.append((Path(entry.path), os.readlink(entry.path)))
            except OSError:             # not a symlink: not ours
                out.append((Path(entry.path), ""))
        return out

    def _sync(self) -> None:
        with self._cond:
            self._written += 1
            mine = self._written
            while self._synced < mine:
                if not self._syncing:
                    self._syncing = True
                    target = self._written
                    break
                self._cond.wait()
            else:
                return
        done = False
        try:
            _fsync_dir(self.directory)
            done = True
        finally:
            with self._cond:
                self._syncing = False
                if done:
                    self._synced = max(self._synced, target)
                self._cond.notify_all()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    remaining = length
    pos = offset
    if not hasattr(os, "copy_file_range"):   # not Linux: copy in user space
        _copy_plain(src, dst, pos, remaining)
        return
    try:
        while remaining > 0:
            n = os.copy_file_range(src, dst, min(remaining, 1 << 30), pos)
            if n == 0:
                break
            pos += n
            remaining -= n
        if remaining == 0:
            return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    _copy_plain(src, dst, pos, remaining)


def _copy_plain(src: int, dst: int, pos: int, remaining: int) -> None:
    """Chunked pread/write copy, for filesystems or platforms without copy_file_range."""
    while remaining > 0:
        chunk = os.pread(src, min(remaining, 1 << 20), pos)
        if not chunk:
            raise OSError(errno.EIO, "source file shorter than expected")
        _write_all(dst, chunk)
        pos += len(chunk)
        remaining -= len(chunk)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
