"""The bounded socket fuzz run of CI (tests/fuzz_pdus.py; long runs: scripts/fuzz-sockets).

A real `python -m pacs_server` process gets mutated A-ASSOCIATE-RQ and P-DATA PDUs and
random bytes; after every case it must answer C-ECHO with its thread count back to the
baseline within two seconds. At the end no association may still be counted active and
no exception may have escaped a thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fuzz_pdus import ServerProcess, run_campaign

CASES = int(os.environ.get("PACS_FUZZ_CASES", "800"))
SEED = int(os.environ.get("PACS_FUZZ_SEED", "20261201"))


def test_socket_fuzz(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    try:
        report = run_campaign(server.port, server.proc.pid, CASES, SEED, alive=server.alive)
        time.sleep(0.5)
        active = server.gauge()
        uncaught = server.uncaught()
    finally:
        server.stop()
    print(f"seed {SEED}: {report.cases} cases in {report.seconds} s, "
          f"{len(report.findings)} findings")
    assert report.cases == CASES
    assert report.findings == [], report.findings[:5]
    assert uncaught == 0, "an exception escaped a server thread (see server.log)"
    assert active == 0, f"{active} associations still counted active after the run"
