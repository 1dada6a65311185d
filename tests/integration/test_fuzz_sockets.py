"""The bounded socket fuzz run of CI (tests/support/fuzz_pdus.py; long runs: scripts/fuzz-sockets).

A real `python -m pacs_server` process gets mutated A-ASSOCIATE-RQ and P-DATA PDUs and
random bytes; after every case it must answer C-ECHO with its thread count back to the
baseline within two seconds. At the end no association may still be counted active and
no exception may have escaped a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

from support.fuzz_pdus import fuzz_fresh_server

CASES = int(os.environ.get("PACS_FUZZ_CASES", "600"))
SEED = int(os.environ.get("PACS_FUZZ_SEED", "20261201"))


def test_socket_fuzz(tmp_path: Path) -> None:
    out = fuzz_fresh_server(tmp_path, CASES, SEED)
    print(f"seed {SEED}: {out.report.cases} cases in {out.report.seconds} s, "
          f"{len(out.report.findings)} findings")
    assert out.report.cases == CASES
    assert out.report.findings == [], out.report.findings[:5]
    assert out.uncaught == 0, "an exception escaped a server thread (see server.log)"
    assert out.active == 0, f"{out.active} associations still counted active after the run"
