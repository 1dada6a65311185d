#!/usr/bin/env python3
"""pacs_server with a proposed pynetdicom change simulated: benchmark evidence only.

    PACS_WHAT_IF=retrieve-path .venv/bin/python scripts/bench/run.py \\
        --pacs-bin scripts/bench/what_if.py --servers pacs_server --phases retrieve,huge

docs/performance.md proposes two upstream changes to pynetdicom. This launcher starts the
normal pacs_server after patching the installed pynetdicom in memory so that the benchmark
can measure what each change would give. It is never used by the server itself.

PACS_WHAT_IF (comma list):
  retrieve-path  the C-GET/C-MOVE service class accepts a file path from the handler and
                 sends it with send_c_store(path) and STORE_SEND_CHUNKED_DATASET (no decode,
                 no re-encode); the handler yields the archived file's path.
  fast-poll      pynetdicom's reactors poll every 0.1 ms instead of 1 ms: an approximation
                 of an event-driven reactor's latency (it costs CPU that one would not).

PACS_SWITCH_INTERVAL (seconds): the server's sys.setswitchinterval instead of
dicom/runtime.py's SWITCH_INTERVAL_S, to measure the value kept there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (REPO / ".venv").resolve() and VENV_PY.exists():
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])

import time  # noqa: E402
import types  # noqa: E402
from typing import Any  # noqa: E402

FAST_POLL_S = 0.0001


def retrieve_path() -> None:
    from pydicom.dataset import Dataset
    from pynetdicom import _config, service_class

    from pacs_server.services import retrieve

    class _DatasetOrPath(type):
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, (Dataset, Path))

        def __call__(cls, *args: Any, **kwargs: Any) -> Dataset:
            return Dataset(*args, **kwargs)

    service_class.Dataset = _DatasetOrPath("Dataset", (), {})   # type: ignore[attr-defined]
    _config.STORE_SEND_CHUNKED_DATASET = True
    retrieve.RetrieveService.load = (                           # type: ignore[method-assign]
        lambda self, ref: self._files.path(ref.path))


def fast_poll() -> None:
    from pynetdicom import association, dul

    init = dul.DULServiceProvider.__init__

    def patched_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._run_loop_delay = FAST_POLL_S

    dul.DULServiceProvider.__init__ = patched_init              # type: ignore[method-assign]
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time)
                                    if not k.startswith("__")})
    shim.sleep = lambda s: time.sleep(FAST_POLL_S if 0 < s <= 0.001 else s)
    association.time = shim                                     # type: ignore[attr-defined]


CHANGES = {"retrieve-path": retrieve_path, "fast-poll": fast_poll}


def main() -> int:
    for name in filter(None, os.environ.get("PACS_WHAT_IF", "").split(",")):
        if name not in CHANGES:
            print(f"what_if: unknown change {name!r}; known: {', '.join(CHANGES)}",
                  file=sys.stderr)
            return 2
        CHANGES[name]()
    if os.environ.get("PACS_SWITCH_INTERVAL"):
        from pacs_server.dicom import runtime
        runtime.SWITCH_INTERVAL_S = float(os.environ["PACS_SWITCH_INTERVAL"])
    from pacs_server.cli import main as pacs_main
    return pacs_main()


if __name__ == "__main__":
    sys.exit(main())
