"""Atomic, durable file operations under the archive root.

The write protocol (PS: "an acknowledged C-STORE is on disk"):
  1. write the Part-10 file into <root>/.incoming/<identity>/<random>.part and fsync it;
  2. link it to its final name (create-if-absent: a name another process placed is
     never overwritten) and fsync the directory (and any directory we created on the
     way, so the new entry itself survives a crash);
  3. only then may the caller commit the index row and acknowledge.
A crash leaves at most a *.part file in the process's own .incoming directory, which
`prepare()` removes at its next start, or a placed file whose index row was never
committed: every placement is announced in the `PlacementJournal`
(<root>/.journal/<identity>) first, so the start-up reconciliation
(services/reconcile.py) finds those without walking the archive.

Several processes (workers, nodes) share one root: each writes only under its own
identity (identity.py) and touches a sibling's directories only by age (`stale_s`
arguments), so a process that starts never empties a live transfer of another.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pacs_server.errors import StartupError, StorageUnavailable
from pacs_server.storage.fsops import (
    NO_HARD_LINK,
    copy_range,
    fsync_dir,
    rename_noreplace,
    storage_errors,
    subdirs,
    unlink_quietly,
    write_all,
)
from pacs_server.storage.journal import PathClaims, PlacementJournal

__all__ = ["FileStore", "PathClaims", "PlacementJournal", "storage_errors"]

INCOMING = ".incoming"
JOURNAL = ".journal"
QUARANTINE = ".quarantine"
NODES = ".nodes"
CACHE = ".cache"            # derived data (DICOMweb metadata), rebuilt when missing
CLAIMS = ".claims"          # duplicate_policy: replace, one store per path (PathClaims)
PRIVATE_DIRS = (INCOMING, JOURNAL, QUARANTINE, NODES, CACHE, CLAIMS)
_DIRS_KEPT = 1024           # placement directories kept by FileStore._placing


class FileStore:
    """Files under one root directory; every path is relative and built by `layout`.

    `identity` (identity.process_identity) gives this process its own receive directory
    and journal; empty (tools, tests of one process) uses the shared ones directly.
    """

    def __init__(self, root: str | Path, fsync: bool = True, identity: str = "") -> None:
        self.root = Path(root).resolve()
        self.incoming_root = self.root / INCOMING
        self.incoming = self.incoming_root / identity if identity else self.incoming_root
        self.journal = PlacementJournal(self.root / JOURNAL, fsync, identity)
        self.claims = PathClaims(self.root / CLAIMS, identity)
        self._fsync = fsync
        self._identity = identity
        self._identity_lock: int | None = None
        self._dirs: dict[str, Path] = {}       # placement directories made (_placing)

    # -- lifecycle ------------------------------------------------------------------
    def prepare(self) -> int:
        """Create the root, check it is writable, and remove leftovers of a crash.

        Returns the number of stale partial files removed: only this process's own (its
        identity's directory), never a sibling's live transfer.
        """
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
            self.journal.directory.mkdir(parents=True, exist_ok=True)
            probe = self.incoming / f"probe-{uuid.uuid4().hex}"
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StartupError(f"storage directory {self.root} is not writable: "
                               f"{exc.strerror or exc}") from None
        self._lock_identity()
        # Our own directory is ours alone, and files directly in .incoming belong to no
        # running process (the layout before per-process directories): both go now.
        # A sibling's directory is left to the age-based `sweep_incoming`.
        removed = _remove_files(self.incoming, None)
        if self.incoming != self.incoming_root:
            removed += _remove_files(self.incoming_root, None)
        self.claims.clear_own()
        return removed

    def _lock_identity(self) -> None:
        """Hold <root>/.nodes/<identity>.lock (a POSIX record lock, released when the
        process ends however it ends) so that a second live process with this identity
        is refused before it empties the first one's receive directory.

        Raises:
            StartupError: another running process uses this identity on this archive.
        """
        if not self._identity or self._identity_lock is not None:
            return
        path = self.root / NODES / f"{self._identity}.lock"
        try:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(f"storage directory {self.root} is not writable: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StartupError(
                f"server.node_name: {self._identity!r} is in use by another running "
                f"process on the archive {self.root}; give each node its own") from None
        self._identity_lock = fd

    def release(self) -> None:
        """Let another process take this identity (at stop)."""
        if self._identity_lock is not None:
            os.close(self._identity_lock)
            self._identity_lock = None

    def sweep_incoming(self, max_age_s: float) -> int:
        """Remove receive files nobody has written to for `max_age_s` seconds, in every
        process's directory.

        A sender that drops mid-transfer leaves pynetdicom's partial file behind (no
        handler runs for it); a live transfer touches its file with every fragment.
        The directories stay: an idle process may be alive and about to receive, and an
        empty directory per identity ever used costs nothing.
        """
        cutoff = time.time() - max_age_s
        removed = _remove_files(self.incoming_root, cutoff)
        for sub in subdirs(self.incoming_root):
            removed += _remove_files(sub, cutoff)
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
                write_all(fd, header)
                copy_range(source.fileno(), fd, offset, length)
                if self._fsync:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                unlink_quietly(part)
                raise
            os.close(fd)
        return part

    def holds_incoming(self, path: Path) -> bool:
        """Whether `path` is directly in this process's receive directory."""
        return path.parent == self.incoming

    def adopt_part(self, path: Path, fd: int) -> Path:
        """Make a complete received file in the receive directory (`fd` open on it) the
        staged file as it is: fsynced like `write_part`'s, then placed like one."""
        if self._fsync:
            with storage_errors():
                os.fsync(fd)
        return path

    def place(self, part: Path, rel: PurePosixPath) -> Path:
        """Atomically move a fsynced .part file to its final name and make that durable."""
        with storage_errors():
            final, created, _ = self._name(rel, lambda final: os.replace(part, final))
            self._sync_new_entry(final, created)
        return final

    def place_new(self, part: Path, rel: PurePosixPath) -> bool:
        """Move a fsynced .part file to its final name only if that name is free.

        os.link() creates the name atomically or fails with EEXIST, so two writers can
        never both believe they created the file. Returns False (part left in place)
        when a file already exists there.
        """
        with storage_errors():
            try:
                final, created, linked = self._name(rel, lambda final: _link_new(part, final))
            except FileExistsError:
                return False
            if linked:
                os.unlink(part)
            self._sync_new_entry(final, created)
        return True

    def _name(self, rel: PurePosixPath, make: Callable[[Path], bool | None]
              ) -> tuple[Path, list[Path], bool | None]:
        """`make(final)` at the placement path of `rel` (`_placing`), once more if the
        kept directory has gone since; the path, the directories made, what it said."""
        final, created = self._placing(rel)
        try:
            return final, created, make(final)
        except FileNotFoundError:
            if not self._forget_dir(rel):
                raise
        final, created = self._placing(rel)
        return final, created, make(final)

    def set_aside(self, rel: PurePosixPath) -> bool:
        """Move the file at `rel` to .quarantine if it is still the one seen now;
        returns whether a file was moved.

        For a file no store has in flight and no row names (an orphan): it is moved,
        never overwritten or deleted. The rename is atomic but not conditional, so if
        the moved file turns out to be another one (placed in between by a new store)
        it is linked back and False returned.
        """
        source = self.path(rel)
        try:
            seen = os.stat(source)
        except FileNotFoundError:
            return False
        target = self.root / QUARANTINE / rel
        target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
        with storage_errors():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(source, target)
            except FileNotFoundError:
                return False
            moved = os.stat(target)
            if (moved.st_ino, moved.st_dev) != (seen.st_ino, seen.st_dev):
                try:
                    os.link(target, source)
                    os.unlink(target)
                except FileExistsError:
                    return True     # yet another store placed one: this copy stays aside
                return False
        return True

    def _placing(self, rel: PurePosixPath) -> tuple[Path, list[Path]]:
        """The absolute path a file is placed at, and the directories created for it.

        Placing only creates or replaces the name itself (link, rename: a symbolic link
        there is never followed), so what `path()` checks is the directory's place.
        A directory checked and made once is kept (by its relative path) and not
        resolved and stat'ed again for each instance of its series: ~30-60 µs each.
        Kept only when nothing in the path was a symbolic link; a directory removed
        since (ours pruned by `remove`, or another node's) fails the link or rename
        with ENOENT, and the caller forgets it and places again (`_forget_dir`).
        """
        key = str(rel.parent)
        parent = self._dirs.get(key)
        if parent is not None and rel.name not in ("", ".", ".."):
            return parent / rel.name, []
        final = self.path(rel)
        created = self._makedirs(final.parent)
        if final == self.root / rel:
            if len(self._dirs) >= _DIRS_KEPT:
                self._dirs.clear()
            self._dirs[key] = final.parent
        return final, created

    def _forget_dir(self, rel: PurePosixPath) -> bool:
        """Drop the kept directory of `rel`; whether one was kept."""
        return self._dirs.pop(str(rel.parent), None) is not None

    def _sync_new_entry(self, final: Path, created: list[Path]) -> None:
        """fsync the directory of a newly named file and of each directory created for
        it, so that the name itself survives a crash."""
        if self._fsync:
            fsync_dir(final.parent)
            for d in created:
                fsync_dir(d.parent)

    def discard(self, part: Path | None) -> None:
        """Remove a .part file that will not be placed."""
        if part is not None:
            unlink_quietly(part)

    def remove(self, rel: PurePosixPath | str) -> None:
        """Delete an archived file (best effort) and prune empty parent directories."""
        path = self.path(rel)
        unlink_quietly(path)
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            self._dirs.clear()      # a placement directory may be gone
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

    def age(self, rel: PurePosixPath | str) -> float | None:
        """Seconds since the file at `rel` was written (None: no file there)."""
        try:
            return time.time() - os.stat(self.path(rel)).st_mtime
        except FileNotFoundError:
            return None

    def exists(self, rel: PurePosixPath | str) -> bool:
        return self.path(rel).is_file()

    def usage(self) -> tuple[int, int]:
        """(files, bytes) under the root, its private directories excluded; walks the tree."""
        files = size = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d not in PRIVATE_DIRS]
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


def _link_new(part: Path, final: Path) -> bool:
    """Create the name `final` for `part` (a link: True; on a filesystem without hard
    links a rename without replacing: False), or raise FileExistsError."""
    try:
        os.link(part, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINK:
            raise
        if not rename_noreplace(part, final):
            raise FileExistsError(errno.EEXIST, "name taken", str(final)) from None
        return False
    return True


def _remove_files(directory: Path, cutoff: float | None) -> int:
    """Unlink the regular files in `directory` (only those older than `cutoff`)."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and (
                    cutoff is None or entry.stat().st_mtime < cutoff):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed
