#!/usr/bin/env python3
"""CPU time per stage of the C-STORE path, measured inside the server.

    .venv/bin/python scripts/bench/stage_cpu.py [--count 1000] [--src DIR] [--runs 1]

Starts pacs_server (workers 1) through this file, which wraps the functions of the
store path listed in STAGES so that each adds its thread CPU time
(`time.thread_time`, inclusive of what it calls) and its call count to a table written
at exit; then sends the small set over one storescu association and prints CPU µs per
instance by stage, with the thread that runs it. A thread blocked in fsync or on a
lock costs nothing here, unlike in py-spy's CPU mode. The wrappers cost about 1 µs a
call, so the stages are exact to a few µs. Benchmark evidence only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (REPO / ".venv").resolve() and VENV_PY.exists():
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])

import argparse  # noqa: E402
import atexit  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

OUT_ENV = "PACS_STAGE_CPU_OUT"

# (thread, module, qualified name): inclusive CPU of each; a missing one is skipped.
STAGES = [
    ("DUL", "pynetdicom.dul", "DULServiceProvider._read_pdu_data"),
    ("DUL", "pynetdicom.dul", "DULServiceProvider._decode_pdu"),
    ("DUL", "pacs_server.dicom.transport", "GuardedSocket.recv"),
    ("DUL", "pacs_server.dicom.transport", "GuardedStateMachine.do_action"),
    ("DUL", "pynetdicom.pdu", "P_DATA_TF.to_primitive"),
    ("DUL", "pynetdicom.dimse", "DIMSEServiceProvider.receive_primitive"),
    ("DUL", "pynetdicom.dimse_messages", "DIMSEMessage.decode_msg"),
    ("DUL", "pynetdicom.dimse_messages", "DIMSEMessage.message_to_primitive"),
    ("DUL", "pynetdicom.dimse_messages", "decode"),
    ("DUL", "pynetdicom.dimse_messages", "NamedTemporaryFile"),
    ("DUL", "pynetdicom.dimse_messages", "write_file_meta_info"),
    ("DUL", "pynetdicom.dimse_messages", "create_file_meta"),
    ("DUL", "pynetdicom.dul", "DULServiceProvider._process_recv_primitive"),
    ("DUL", "pynetdicom.dul", "DULServiceProvider._send"),
    ("DUL", "pynetdicom.pdu_primitives", "P_DATA.__init__"),
    ("DUL", "pacs_server.dicom.reactor", "EventDUL._wait"),
    ("DUL", "pacs_server.dicom.receive", "ReceivingMessage.decode_msg"),
    ("DUL", "pacs_server.dicom.receive", "ReceivedStore.decode_msg"),
    ("DUL", "pacs_server.dicom.receive", "ReceivedStore.message_to_primitive"),
    ("DUL", "pacs_server.dicom.receive", "store_command"),
    ("assoc", "pynetdicom.association", "Association._serve_request"),
    ("assoc", "pynetdicom.service_class", "StorageServiceClass.SCP"),
    ("assoc", "pynetdicom.events", "Event.__init__"),
    ("assoc", "pacs_server.dicom.handler", "HandlerGuard._call"),
    ("assoc", "pacs_server.dicom.handler", "HandlerGuard._done"),
    ("assoc", "pacs_server.dicom.store", "handle_store"),
    ("assoc", "pacs_server.services.archive", "ArchiveService.receive"),
    ("assoc", "pacs_server.services.archive", "ArchiveService.check_free_space"),
    ("assoc", "pacs_server.services.archive", "ArchiveService.stage"),
    ("assoc", "pacs_server.services.archive", "check_dataset"),
    ("assoc", "pacs_server.services.archive", "read_record"),
    ("assoc", "pacs_server.services.archive", "build_record"),
    ("assoc", "pacs_server.storage.filestore", "FileStore.write_part"),
    ("assoc", "pacs_server.storage.filestore", "FileStore.adopt_part"),
    ("assoc", "pacs_server.services.archive", "ArchiveService.store"),
    ("assoc", "pacs_server.storage.journal", "PlacementJournal.open"),
    ("assoc", "pacs_server.storage.filestore", "FileStore.place_new"),
    ("assoc", "pacs_server.storage.journal", "PlacementJournal.close"),
    ("assoc", "pacs_server.dicom.bridge", "LoopBridge.run"),
    ("assoc", "pacs_server.storage.filestore", "FileStore.discard"),
    ("assoc", "pacs_server.dicom.associations", "AssociationTracker.operation"),
    ("assoc", "pacs_server.dicom.reactor", "ResponseDIMSE.send_msg"),
    ("assoc", "pacs_server.dicom.reactor", "EventReactors._reactor_step"),
    ("loop", "pacs_server.index.writer", "IndexWriter._commit_batch"),
    ("loop", "pacs_server.index.writer", "IndexWriter.add_instance"),
]

_table: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
_lock = threading.Lock()


def _wrap(name: str, fn: Any) -> Any:
    clock = time.thread_time
    if _is_coroutine(fn):
        # A coroutine's CPU on the loop thread between its awaits is not separable
        # from other tasks' here: count calls only.
        @functools.wraps(fn)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            with _lock:
                _table[name][1] += 1
            return await fn(*args, **kwargs)
        return counted

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = clock() - start
            with _lock:
                row = _table[name]
                row[0] += spent
                row[1] += 1
    return timed


def _is_coroutine(fn: Any) -> bool:
    import inspect
    return inspect.iscoroutinefunction(fn)


def install() -> None:
    for thread, module, qualname in STAGES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        owner: Any = mod
        parts = qualname.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, parts[-1]):
            continue
        setattr(owner, parts[-1], _wrap(f"{thread}:{qualname}", getattr(owner, parts[-1])))
    _wrap_threads()
    atexit.register(_dump)


def _wrap_threads() -> None:
    """Total CPU of each thread, by role, taken as the thread ends."""
    inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def counted(self: threading.Thread) -> None:
        try:
            inner(self)
        finally:
            with _lock:
                row = _table[f"thread:{_role(self)}"]
                row[0] += time.thread_time()
                row[1] += 1

    threading.Thread._bootstrap_inner = counted  # type: ignore[attr-defined]


def _role(thread: threading.Thread) -> str:
    names = {cls.__name__ for cls in type(thread).__mro__}
    if "DULServiceProvider" in names:
        return "DUL thread"
    if "Association" in names:
        return "association thread"
    target = getattr(thread, "_target", None)
    return f"{getattr(target, '__qualname__', None) or thread.name}"


def _dump() -> None:
    out = os.environ.get(OUT_ENV)
    if out:
        with _lock:
            Path(out).write_text(json.dumps(_table))


def serve() -> int:
    install()
    from pacs_server.cli import main as pacs_main
    return int(pacs_main() or 0)


def run(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import clients
    import generate
    import servers

    root = Path(a.data_dir) / f"small-{a.count}"
    m = generate.generate(root, a.count, split=4)
    servers.PACS_BIN = Path(__file__).resolve()
    totals: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="pacs-stages-") as work:
        for r in range(a.runs):
            srv = servers.PacsServer(Path(work) / f"s{r}")
            out = Path(work) / f"stages-{r}.json"
            srv.env = {OUT_ENV: str(out), **({"PYTHONPATH": a.src} if a.src else {})}
            srv.start()
            try:
                t = clients.store(srv.port, srv.ae, [root])
                load = os.getloadavg()[0]
            finally:
                srv.stop()
            if t.returncode:
                raise SystemExit(t.error())
            got = json.loads(out.read_text())
            print(f"run {r}: {m.files / t.seconds:.0f}/s, load {load:.1f}", file=sys.stderr)
            for name, (cpu, calls) in got.items():
                totals[name].append(cpu * 1e6 / m.files)
                totals[name + "#calls"].append(calls / m.files)
    print(f"\n{m.files} small instances over one association, {a.runs} run(s); "
          "CPU µs per instance (median), inclusive\n")
    print("| thread | stage | µs/instance | calls/instance |")
    print("| --- | --- | --- | --- |")
    import statistics
    for name in sorted(k for k in totals if not k.endswith("#calls")):
        thread, _, stage = name.partition(":")
        calls = statistics.median(totals.get(name + "#calls", [0]))
        print(f"| {thread} | `{stage}` | {statistics.median(totals[name]):.0f} | "
              f"{calls:.2f} |")
    return 0


def main() -> int:
    if "--config" in sys.argv:          # started by servers.PacsServer as the server
        return serve()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--src", help="src directory to run (PYTHONPATH); default this tree")
    p.add_argument("--data-dir", default="/tmp/pacs-bench-data")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
