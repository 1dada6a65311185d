"""`pacs_server mpps ...`: the performed procedure steps in the index, for administrators.

    pacs_server mpps list [--status STATUS] [--limit N] [--json] [--config FILE]
    pacs_server mpps show UID [--json] [--config FILE]

Reads the index the server's configuration names (`--config`, `--db`), while the
server runs or not; it never changes the database. Exit codes: 0 done, 1 not found or
index unreadable, 2 configuration error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC
from pathlib import Path
from typing import Any

from pacs_server.config import load_config
from pacs_server.errors import ConfigError, PacsError
from pacs_server.index.engine import create_engine
from pacs_server.index.mpps import MppsRepository, StepRecord
from pacs_server.services.mpps import MppsService, decode
from pacs_server.services.mpps_rules import STATUSES

EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2

_COLUMNS = (("SOP INSTANCE UID", "sop_instance_uid"), ("STATUS", "status"),
            ("START", "start"), ("MOD", "modality"), ("STATION", "station_ae"),
            ("ACCESSION", "accession_number"), ("SPS ID", "sps_id"),
            ("PATIENT ID", "patient_id"), ("PATIENT NAME", "patient_name"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacs_server mpps",
                                description="Performed procedure steps (MPPS) in the index.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    common.add_argument("--db", metavar="FILE", help="SQLite index file (overrides database.path)")
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", parents=[common], help="the newest steps first")
    listing.add_argument("--status", choices=STATUSES, type=_status,
                         help="only steps with this status (in_progress works too)")
    listing.add_argument("--limit", type=int, default=1000, help="at most N steps (1000)")
    show = sub.add_parser("show", parents=[common], help="one step with all its attributes")
    show.add_argument("uid", help="the step's SOP Instance UID")
    return p


def _status(value: str) -> str:
    return value.upper().replace("_", " ")


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"database.path": args.db} if args.db else {}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    db = Path(cfg.database.path).expanduser()
    if not cfg.database.url and not db.exists():
        return _fail(f"no index database at {db}", EXIT_NOT_FOUND)  # do not create one
    try:
        return asyncio.run(_run(args, cfg))
    except PacsError as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except BrokenPipeError:
        # `... | head`: the reader left; Python's flush at exit must not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _run(args: argparse.Namespace, cfg: Any) -> int:
    engine = create_engine(cfg.database)
    try:
        steps = MppsService(MppsRepository(engine))
        if args.action == "list":
            _print_list(await steps.recent(args.status, max(args.limit, 1)), args.json)
            return 0
        record = await steps.get(args.uid)
        if record is None:
            return _fail(f"no procedure step {args.uid}", EXIT_NOT_FOUND)
        _print_step(record, args.json)
        return 0
    finally:
        await engine.dispose()


def _fields(record: StepRecord) -> dict[str, Any]:
    out = asdict(record)
    del out["dataset"]
    for key in ("created_at", "updated_at"):
        when = out[key]
        if when is not None:     # stored in UTC; SQLite gives it back without the zone
            out[key] = (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
    return out


def _print_list(records: list[StepRecord], as_json: bool) -> None:
    rows = [_fields(r) for r in records]
    if as_json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    for row in rows:
        row["start"] = f"{row['start_date']} {row['start_time']}".strip()
    table = [[h for h, _ in _COLUMNS]] + [[str(row[k]) for _, k in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(f"{len(rows)} step(s)")


def _print_step(record: StepRecord, as_json: bool) -> None:
    fields = _fields(record)
    ds = decode(record.dataset)
    if as_json:
        fields["attributes"] = ds.to_json_dict()   # the DICOM JSON model (PS3.18 F.2)
        print(json.dumps(fields, indent=1, ensure_ascii=False))
        return
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {value if value is not None else ''}")
    print("attributes:")
    print(ds)


def _fail(message: str, code: int) -> int:
    print(f"pacs_server mpps: {message}", file=sys.stderr)
    return code
