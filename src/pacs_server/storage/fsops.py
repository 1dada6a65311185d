"""Small filesystem operations shared by the file store and the placement journal."""

from __future__ import annotations

import ctypes
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


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_noreplace(source: Path, target: Path) -> bool:
    """renameat2(RENAME_NOREPLACE): False if `target` exists. Where the call is missing
    (not Linux, old kernel or libc), a check then a rename: racy across processes, so
    a shared archive needs a filesystem with hard links (docs/operations.md)."""
    libc = _libc()
    func = getattr(libc, "renameat2", None) if libc is not None else None
    if func is not None:
        if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(target))
    if target.exists():
        return False
    os.replace(source, target)
    return True


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
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
        write_all(dst, chunk)
        pos += len(chunk)
        remaining -= len(chunk)


