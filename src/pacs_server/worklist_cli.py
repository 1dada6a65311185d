"""`pacs_server worklist add|list|show|remove`: worklist management on the server's index.

The command opens the database named by the configuration (`--config`, `--db`),
migrating it first if needed, and commits each change at once: a running server reads
the worklist per query and sees it immediately.

Exit codes: 0 done, 1 item not found or database unavailable, 2 invalid input
(one line on stderr naming the item and the field; nothing of that input is stored).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pacs_server.config import Config
from pacs_server.errors import InvalidQuery, InvalidWorklistItem, PacsError, StartupError

EXIT_NOT_FOUND = 1
EXIT_INVALID = 2

_DATE_RANGE = re.compile(r"(\d{8})?(-(\d{8})?)?")
_STATUSES = ("SCHEDULED", "STARTED", "COMPLETED", "DISCONTINUED")
_TABLE = (("ID", "pk"), ("PATIENT ID", "patient_id"), ("PATIENT NAME", "patient_name"),
          ("ACCESSION", "accession_number"), ("MOD", "modality"), ("STATION", "station_ae"),
          ("DATE", "start_date"), ("TIME", "start_time"), ("SPS ID", "sps_id"),
          ("STATUS", "sps_status"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:       # one line and exit code 2, like the rest
        print(f"pacs_server worklist: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pacs_server worklist", description="Manage Modality Worklist items.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = sub.add_parser("add", help="add items from JSON, a .wl/.dcm file, a directory, or -")
    add.add_argument("source", metavar="FILE|-")
    ls = sub.add_parser("list", help="list items (every status unless --status)")
    ls.add_argument("--date", help="start date YYYYMMDD or range YYYYMMDD-YYYYMMDD")
    ls.add_argument("--modality", help="e.g. CT")
    ls.add_argument("--station", help="scheduled station AE title")
    ls.add_argument("--status", type=str.upper, choices=_STATUSES)
    for name in ("show", "remove"):
        cmd = sub.add_parser(name, help=f"{name} one item by its ID")
        cmd.add_argument("id", type=int)
    return p


def main(argv: Sequence[str], cfg: Config) -> int:
    """Run one worklist command against the configured index; returns the exit code."""
    args = build_parser().parse_args(list(argv))
    if args.action == "list" and args.date and not _DATE_RANGE.fullmatch(args.date):
        return _fail(f"--date: {args.date!r} is not YYYYMMDD or YYYYMMDD-YYYYMMDD",
                     EXIT_INVALID)
    try:
        if args.action == "add":
            from pacs_server.services.worklist_import import load_items

            items = load_items(args.source)
            ids = _with_service(cfg, lambda svc: svc.add([ds for _, ds in items]))
            print(f"added {len(ids)} worklist item(s): ids {', '.join(map(str, ids))}")
            return 0
        if args.action == "list":
            rows = _with_service(cfg, lambda svc: svc.list(
                args.date or "", args.modality or "", args.station or "", args.status or ""))
            _print_table([row for row, _ in rows])
            return 0
        if args.action == "show":
            found = _with_service(cfg, lambda svc: svc.show(args.id))
            if found is None:
                return _fail(f"no worklist item {args.id}", EXIT_NOT_FOUND)
            row, ds = found
            print(f"worklist item {row.pk} (added {row.created_at:%Y-%m-%d %H:%M:%S})")
            print(ds)
            return 0
        removed = _with_service(cfg, lambda svc: svc.remove(args.id))
        if not removed:
            return _fail(f"no worklist item {args.id}", EXIT_NOT_FOUND)
        print(f"removed worklist item {args.id}")
        return 0
    except (InvalidWorklistItem, InvalidQuery) as exc:
        return _fail(str(exc), EXIT_INVALID)
    except StartupError as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)


def _with_service(cfg: Config, use: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        from pacs_server.index.engine import create_engine, migrate
        from pacs_server.index.worklist import WorklistRepository
        from pacs_server.services.worklist import WorklistService

        engine = create_engine(cfg.database)
        try:
            await migrate(engine)
            return await use(WorklistService(WorklistRepository(engine)))
        except Exception as exc:
            if isinstance(exc, PacsError):
                raise
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)]
            raise StartupError(f"index database: {reason[0]}") from None
        finally:
            await engine.dispose()
    return asyncio.run(run())


def _print_table(rows: list[Any]) -> None:
    cells = [[h for h, _ in _TABLE]]
    for row in rows:
        cells.append([str(row.pk) if key == "pk" else row.columns.get(key, "")
                      for _, key in _TABLE])
    widths = [max(len(r[i]) for r in cells) for i in range(len(_TABLE))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(rows)} item(s)")


def _fail(message: str, code: int) -> int:
    print(f"pacs_server worklist: {message}", file=sys.stderr)
    return code
