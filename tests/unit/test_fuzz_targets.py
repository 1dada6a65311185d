"""The atheris targets (support/fuzz_targets.py) on their seeds and saved findings, and a
short bounded atheris run of each.

The replay is deterministic and needs no atheris: every seed and every file under
tests/fixtures/fuzz/<target>/ (findings of scripts/fuzz-atheris, kept once fixed) goes
through the target, which raises only when a parser lets an undocumented exception out.
The bounded run (a few hundred to a few thousand inputs per target, at most 4 s of
fuzzing each: about 20 s in all on an idle 2-core machine, 3 s of it per target the
start-up) shows the harness itself still works and finds nothing new quickly; the long
runs are scripts/fuzz-atheris.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.fuzz_targets import ROOT, TARGETS, saved_cases, seeds

CASES = [(name, path) for name in sorted(TARGETS) for path in saved_cases(name)]
BOUNDED_RUNS = {"header_scan": 3000, "identifier": 3000, "dataset_check": 400, "config": 400}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_pass(name: str) -> None:
    for seed in seeds(name):
        TARGETS[name](seed)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}-{p.name}" for n, p in CASES])
def test_saved_case_is_fixed(name: str, path: Path) -> None:
    TARGETS[name](path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bounded_atheris_run_finds_nothing(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run(
        [sys.executable, "-m", "support.fuzz_atheris", name, f"-runs={BOUNDED_RUNS[name]}",
         "-max_total_time=4", f"-artifact_prefix={tmp_path}/", "-seed=1",
         str(tmp_path / "corpus")],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr
    assert not list(tmp_path.glob("crash-*"))
