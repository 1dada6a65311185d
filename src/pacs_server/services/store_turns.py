"""Which store may place a file at an archive path now (services/archive.py's turns).

Stores of one SOP Instance UID within a process take turns on a condition; stores of
one path across processes (workers, nodes) take turns under the path claim
(storage/journal.PathClaims): every `replace` store, and a `reject`/`ignore` store once
it found the name taken and not indexed. Waits poll (the other party may be another
host), from 20 ms growing to 0.5 s, for at most `wait_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pacs_server.errors import PathTaken
from pacs_server.storage.journal import PathClaims

_POLL_S = 0.02               # while another process has the same name in flight,
_POLL_MAX_S = 0.5            # growing to this


class StoreTurns:
    """The per-UID turns of this process and the path claims shared with the others."""

    def __init__(self, claims: PathClaims, in_flight_s: float, wait_s: float) -> None:
        self._claims = claims
        self._in_flight_s = in_flight_s
        self._wait_s = wait_s
        self._uids: set[str] = set()
        self._uids_cond = threading.Condition()

    def wait_until(self, verdict: Callable[[], str | None], rel: PurePosixPath) -> str:
        """Poll `verdict` until it says something other than None.

        Raises:
            PathTaken: still None after `wait_s`.
        """
        deadline = time.monotonic() + self._wait_s
        delay = _POLL_S
        while (found := verdict()) is None:
            if time.monotonic() >= deadline:
                # Reason first: the Error Comment keeps only 64 characters.
                raise PathTaken(f"being stored by another process: {rel}")
            time.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)
        return found

    @contextmanager
    def path(self, rel: PurePosixPath) -> Iterator[None]:
        """This store alone, among all processes, places and indexes a file at `rel`,
        waiting up to `wait_s` for another.

        Raises:
            PathTaken: another store kept the claim for `wait_s`.
        """
        taken: list[Path] = []

        def take() -> str | None:
            claim = self._claims.take(rel, self._in_flight_s)
            if claim is None:
                return None
            taken.append(claim)
            return "claimed"

        self.wait_until(take, rel)
        try:
            yield
        finally:
            self._claims.release(taken[0])

    @contextmanager
    def uid(self, uid: str) -> Iterator[None]:
        """Serialise concurrent stores of the same SOP Instance UID (across threads)."""
        with self._uids_cond:
            while uid in self._uids:
                self._uids_cond.wait()
            self._uids.add(uid)
        try:
            yield
        finally:
            with self._uids_cond:
                self._uids.discard(uid)
                self._uids_cond.notify_all()
