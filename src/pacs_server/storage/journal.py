"""The placement journal: one intent per store between placing its file and
committing its row, per process (<archive>/.journal/<identity>/)."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from pathlib import Path, PurePosixPath

from pacs_server.storage.fsops import (
    NO_HARD_LINK,
    GroupFsync,
    storage_errors,
    subdirs,
    unlink_quietly,
)

# "/" in the path an intent's name carries: no component of a layout path has it
# (storage/layout.py keeps [A-Za-z0-9._-]).
_SEP = "+"
_NAME_MAX = 255


class PlacementJournal:
    """Placements announced but not yet indexed: one intent per in-flight store.

    An intent is a name in <root>/.journal/<identity>/ that says which relative path is
    being placed: made in one system call, durable with one fsync of the journal
    directory, and that fsync is shared by every store in flight (group commit, like the
    index writer's). It is written before the file is placed and removed (without fsync)
    once the index row is committed or the placement undone; a crash in between leaves
    it for the reconciliation at start.

    The intent is a hard link to the staged file, its name `<digest>.<random>.<path
    with / as +>`, when the caller gives the file and the name fits: no inode is made
    or freed per store. Otherwise it is a symbolic link whose target is the path (a new
    inode, and one freed at close: on ext4 without a journal every later file creation
    then steps over each inode freed in the last minutes: without the intent the
    server's CPU per instance at 4 associations was 1.0-1.8 ms lower; docs/performance.md).
    """

    def __init__(self, root: Path, fsync: bool = True, identity: str = "") -> None:
        self.root = root
        self.directory = root / identity if identity else root
        self._fsync = fsync
        self._syncs = GroupFsync()

    def open(self, rel: PurePosixPath, staged: Path | None = None) -> Path:
        """Announce that `rel` is about to be placed (from `staged`, the file to place,
        if given); durable when this returns.

        The intent's name starts with a digest of `rel`, so `in_flight(rel)` finds the
        intents of every process for one path without reading the others.
        """
        key = _path_key(rel)
        with storage_errors():
            intent = self._link(staged, key, str(rel)) if staged is not None else None
            if intent is None:
                intent = self.directory / f"{key}.{uuid.uuid4().hex}"
                os.symlink(str(rel), intent)
            if self._fsync:
                self._syncs.sync(self.directory)
        return intent

    def _link(self, staged: Path, key: str, rel: str) -> Path | None:
        """The intent as a hard link to `staged`; None where the name would be too
        long or the filesystem has no hard links."""
        if _SEP in rel:
            return None
        name = f"{key}.{uuid.uuid4().hex[:12]}.{rel.replace('/', _SEP)}"
        if len(name.encode()) > _NAME_MAX:
            return None
        intent = self.directory / name
        try:
            os.link(staged, intent)
        except OSError as exc:
            if exc.errno in NO_HARD_LINK:
                return None
            raise
        return intent

    def close(self, intent: Path | None) -> None:
        """The placement is indexed or undone: forget it (a lost unlink is harmless)."""
        if intent is not None:
            unlink_quietly(intent)

    def pending(self) -> list[tuple[Path, str]]:
        """Every open intent of this process and the relative path it announces, with
        the intents directly in the journal root (the layout before per-process
        journals, which no running process writes)."""
        out = _intents(self.directory, None)
        if self.directory != self.root:
            out += _intents(self.root, None)
        return out

    def stale(self, max_age_s: float) -> list[tuple[Path, str]]:
        """The intents of other processes older than `max_age_s`: a store holds its
        intent from before the placement until its commit, so an older one was left by
        a process that died or gave up on its index call."""
        cutoff = time.time() - max_age_s
        out: list[tuple[Path, str]] = []
        for sub in subdirs(self.root):
            if sub != self.directory:
                out += _intents(sub, cutoff)
        return out

    def in_flight(self, rel: PurePosixPath, max_age_s: float) -> bool:
        """Whether a store of another process has announced `rel` within `max_age_s`
        and not yet closed its intent. This process's own intents are not looked at:
        its stores of one SOP Instance UID take turns (ArchiveService's claim), so an
        own intent for `rel` is the caller's or one an earlier failure left open."""
        prefix = f"{_path_key(rel)}."
        cutoff = time.time() - max_age_s
        for directory in (self.root, *subdirs(self.root)):
            if directory == self.directory:
                continue
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith(prefix):
                    continue
                try:
                    if _announced(entry) >= cutoff:
                        return True
                except OSError:
                    pass        # closed while we looked
        return False

    def shared(self) -> bool:
        """Whether other processes (their journals) use this archive too."""
        return any(d != self.directory for d in subdirs(self.root))

    def left_open(self, rel: PurePosixPath, mine: Path) -> bool:
        """Whether this process has an intent for `rel` besides `mine`: one an earlier
        store left open (an ambiguous index failure), so the file at `rel` may be ours."""
        prefix = f"{_path_key(rel)}."
        try:
            return any(e.name.startswith(prefix) and e.path != str(mine)
                       for e in os.scandir(self.directory))
        except OSError:
            return False



class PathClaims:
    """Which process may replace the file at a path: one claim per path, across
    processes and hosts (<root>/.claims/<digest of the path>, a symbolic link to the
    holder's identity).

    `duplicate_policy: replace` overwrites a placed file, so two stores of one path
    must not interleave their placement and commit (the row would describe the other's
    file); `reject`/`ignore` stores that found the name taken and not indexed take it
    too, so that two of them meeting one orphan take turns. A claim is created with
    one atomic system call that fails if it exists, on a local or network filesystem
    alike. It is taken while the store has no intent open, so the holder never waits
    for another claimant's intent. A claim older
    than `stale_s` is taken for abandoned (its holder died); a process drops its own
    at start.
    """

    def __init__(self, directory: Path, identity: str = "") -> None:
        self.directory = directory
        self._holder = identity or "-"

    def take(self, rel: PurePosixPath, stale_s: float) -> Path | None:
        """Claim `rel`; the claim to `release`, or None while another store holds it."""
        claim = self.directory / _path_key(rel)
        with storage_errors():
            for _ in range(3):
                try:
                    os.symlink(self._holder, claim)
                    return claim
                except FileExistsError:
                    pass
                except FileNotFoundError:       # made with the first claim
                    self.directory.mkdir(exist_ok=True)
                    continue
                if not self._break_stale(claim, stale_s):
                    return None
        return None

    def _break_stale(self, claim: Path, stale_s: float) -> bool:
        """Remove `claim` if it is older than `stale_s`; False if it is held."""
        try:
            if time.time() - claim.lstat().st_mtime < stale_s:
                return False
            # Renamed first: of two processes breaking it at once only one gets it.
            broken = claim.with_name(f"{claim.name}.{uuid.uuid4().hex}")
            os.rename(claim, broken)
        except FileNotFoundError:
            return True                 # released meanwhile
        try:
            if time.time() - broken.lstat().st_mtime < stale_s:
                # A fresh claim taken after the stale one went: given back.
                os.link(broken, claim, follow_symlinks=False)
        except OSError:
            pass
        unlink_quietly(broken)
        return True

    def release(self, claim: Path | None) -> None:
        if claim is not None:
            unlink_quietly(claim)

    def clear_own(self) -> int:
        """Drop the claims a previous run of this identity left (it is not running:
        the identity lock is held); returns how many."""
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in entries:
            try:
                if os.readlink(entry.path) == self._holder:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed


def _path_key(rel: PurePosixPath | str) -> str:
    return hashlib.sha1(str(rel).encode(), usedforsecurity=False).hexdigest()[:20]


def _intents(directory: Path, cutoff: float | None) -> list[tuple[Path, str]]:
    """(intent, the path it announces) of the intents in `directory` (older than
    `cutoff` if given); "" for a name that is not an intent of ours."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                continue            # another process's journal
            if cutoff is not None and _announced(entry) >= cutoff:
                continue
            if entry.is_symlink():
                out.append((Path(entry.path), os.readlink(entry.path)))
            else:
                out.append((Path(entry.path), _named(entry.name)))
        except FileNotFoundError:
            continue                # closed while we looked
        except OSError:
            out.append((Path(entry.path), ""))
    return out


def _named(name: str) -> str:
    """The path a hard-link intent's name carries, or "" if it carries none (checked
    against the digest the name starts with)."""
    key, _, rest = name.partition(".")
    rel = rest.partition(".")[2].replace(_SEP, "/")
    return rel if rel and _path_key(rel) == key else ""


def _announced(entry: os.DirEntry[str]) -> float:
    """When an intent was made: a symbolic link's mtime; a hard link's ctime (set by the
    link; the file's mtime is when its data was written, which may be much earlier)."""
    st = entry.stat(follow_symlinks=False)
    return st.st_mtime if stat.S_ISLNK(st.st_mode) else max(st.st_mtime, st.st_ctime)
