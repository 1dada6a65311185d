"""The placement journal: one intent per store between placing its file and
committing its row, per process (<archive>/.journal/<identity>/)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path, PurePosixPath

from pacs_server.storage.fsops import GroupFsync, storage_errors, subdirs, unlink_quietly


class PlacementJournal:
    """Placements announced but not yet indexed: one intent per in-flight store.

    An intent is a symbolic link <root>/.journal/<random> whose target is the relative
    path being placed: created in one system call with its content, durable with one
    fsync of the journal directory, and that fsync is shared by every store in flight
    (group commit, like the index writer's). It is written before the file is placed
    and removed (without fsync) once the index row is committed or the placement
    undone; a crash in between leaves it for the reconciliation at start.
    """

    def __init__(self, root: Path, fsync: bool = True, identity: str = "") -> None:
        self.root = root
        self.directory = root / identity if identity else root
        self._fsync = fsync
        self._syncs = GroupFsync()

    def open(self, rel: PurePosixPath) -> Path:
        """Announce that `rel` is about to be placed; durable when this returns.

        The intent's name starts with a digest of `rel`, so `in_flight(rel)` finds the
        intents of every process for one path without reading the others.
        """
        intent = self.directory / f"{_path_key(rel)}.{uuid.uuid4().hex}"
        with storage_errors():
            os.symlink(str(rel), intent)
            if self._fsync:
                self._syncs.sync(self.directory)
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
                    if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
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
    """(intent, target) of the symlinks in `directory` (older than `cutoff` if given)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                continue            # another process's journal
            if cutoff is not None and entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            out.append((Path(entry.path), os.readlink(entry.path)))
        except FileNotFoundError:
            continue                # closed while we looked
        except OSError:             # not a symlink: not ours
            out.append((Path(entry.path), ""))
    return out
