"""Small filesystem operations shared by the file store and the placement journal."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacs_server.errors import StorageFull, StorageUnavailable

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


def subdirs(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory)
                if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
