"""Run one target of support/fuzz_targets.py under atheris (libFuzzer).

    python -m support.fuzz_atheris TARGET [libFuzzer options] [CORPUS_DIR]

The corpus directory (default: a fresh temporary one) is seeded with the target's
seeds; crashes are written as tests/fixtures/fuzz/<target>/crash-<sha1> unless
`-artifact_prefix=` says otherwise, so that a finding becomes a regression case of
tests/unit/test_fuzz_targets.py once it is fixed. Bound a run with `-runs=N` and/or
`-max_total_time=S` (scripts/fuzz-atheris does).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["pacs_server"]):
    from support import fuzz_targets


def main(argv: list[str]) -> None:
    # pydicom warns (and logs) about every odd value it meets: millions of lines, and
    # most of a run's time, for nothing a target checks.
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    if len(argv) < 2 or argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: fuzz_atheris TARGET [libFuzzer options] [CORPUS_DIR]; "
                 f"targets: {', '.join(fuzz_targets.TARGETS)}")
    name = argv[1]
    options = [a for a in argv[2:] if a.startswith("-")]
    dirs = [a for a in argv[2:] if not a.startswith("-")]
    corpus = Path(dirs[0]) if dirs else Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in fuzz_targets.seeds(name):
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    if not any(o.startswith("-artifact_prefix=") for o in options):
        crashes = fuzz_targets.CASES / name
        crashes.mkdir(parents=True, exist_ok=True)
        options.append(f"-artifact_prefix={crashes}/")
    target = fuzz_targets.TARGETS[name]
    atheris.Setup([argv[0], *options, str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
