"""storage/fsops.py GroupFsync: callers at the same time share an fsync, and none
returns before an fsync that started after it asked has finished (a failed one covers
nobody)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pacs_server.storage import fsops
from pacs_server.storage.fsops import GroupFsync


class Recorder:
    """The real fsync_dir, slowed so that callers overlap, recording when each ran."""

    def __init__(self, fail_first: bool = False) -> None:
        self.runs: list[tuple[float, float]] = []
        self.fail_first = fail_first
        self._real = fsops.fsync_dir

    def __call__(self, directory: Path) -> None:
        start = time.monotonic()
        time.sleep(0.02)
        if self.fail_first and not self.runs:
            self.runs.append((start, -1.0))
            raise OSError(5, "I/O error")
        self._real(directory)
        self.runs.append((start, time.monotonic()))


def callers(tmp_path: Path, group: GroupFsync, n: int) -> list[tuple[float, float, str]]:
    out: list[tuple[float, float, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        asked = time.monotonic()
        outcome = "ok"
        try:
            group.sync(tmp_path)
        except OSError:
            outcome = "error"
        with lock:
            out.append((asked, time.monotonic(), outcome))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def covered(asked: float, returned: float, runs: list[tuple[float, float]]) -> bool:
    return any(start >= asked and 0 <= end <= returned for start, end in runs)


def assert_settled(tmp_path: Path, group: GroupFsync, recorder: Recorder) -> None:
    """Nothing left running or owed: a caller alone now runs one fsync of its own."""
    before = len(recorder.runs)
    asked = time.monotonic()
    group.sync(tmp_path)
    assert len(recorder.runs) == before + 1 and recorder.runs[-1][0] >= asked


def test_concurrent_callers_share_fsyncs_and_each_is_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(fsops, "fsync_dir", recorder)
    group = GroupFsync()
    calls = callers(tmp_path, group, 8)
    assert len(calls) == 8 and all(outcome == "ok" for *_, outcome in calls)
    assert all(covered(asked, returned, recorder.runs) for asked, returned, _ in calls)
    assert len(recorder.runs) <= 3          # one running, one for everyone who came meanwhile
    assert_settled(tmp_path, group, recorder)


def test_a_failed_fsync_fails_its_caller_and_covers_nobody(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(fail_first=True)
    monkeypatch.setattr(fsops, "fsync_dir", recorder)
    group = GroupFsync()
    calls = callers(tmp_path, group, 4)
    assert sorted(outcome for *_, outcome in calls) == ["error", "ok", "ok", "ok"]
    ok_runs = [r for r in recorder.runs if r[1] >= 0]
    assert all(covered(asked, returned, ok_runs) for asked, returned, o in calls if o == "ok")
    assert_settled(tmp_path, group, recorder)


def test_one_caller_alone_fsyncs_every_time(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(fsops, "fsync_dir", recorder)
    group = GroupFsync()
    for _ in range(3):
        group.sync(tmp_path)
    assert len(recorder.runs) == 3
