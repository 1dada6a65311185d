"""`store_scp`: the receive-only tool of the same engine.

    store_scp PORT AE_TITLE --storage-dir DIR [--index-db FILE] [--accept CT,MR,US]
              [--naming hierarchical|flat|date] [--config store_scp.yaml]
    store_scp --config store_scp.yaml          (port, AE title, directory from the file)

The file has the pacs_server schema (`accepted_sop_classes` may stand at the top
level). A `database` section in it indexes what is received, as --index-db does.
Arguments and options override the file.

Without --index-db it stores files only; a duplicate is then detected by its file
already being present. On a terminal it keeps a one-line live status; when stopped it
prints a summary with storage statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from pacs_server import __version__
from pacs_server.app import PacsApp
from pacs_server.config import Config, load_config
from pacs_server.errors import ConfigError, ExitCode, StartupError

EXIT_STARTUP = ExitCode.STARTUP
EXIT_CONFIG = ExitCode.CONFIG


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="store_scp", description="Receive DICOM instances into a directory (C-STORE SCP).")
    p.add_argument("port", type=int, nargs="?",
                   help="port to listen on (0 = ephemeral); default: server.port of --config")
    p.add_argument("ae_title", nargs="?", help="our AE title; default: server.ae_title of --config")
    p.add_argument("--storage-dir",
                   help="where received files go; default: storage.directory of --config")
    p.add_argument("--index-db", metavar="FILE", help="also index instances in this SQLite file")
    p.add_argument("--accept", metavar="LIST",
                   help="comma-separated modality codes, SOP class names or UIDs (default: all)")
    p.add_argument("--naming", choices=["hierarchical", "flat", "date", "date-based"],
                   help="file layout")
    p.add_argument("--duplicates", choices=["reject", "replace", "ignore"],
                   help="what to do with an SOP instance received twice")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--config", metavar="FILE", help="YAML file with the pacs_server schema")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit")
    p.add_argument("--version", action="version", version=f"store_scp {__version__}")
    return p


def file_sections(path: str | None) -> set[str]:
    """The top-level keys of the config file (empty without one or if unreadable: the
    real load reports what is wrong with it)."""
    if path is None:
        return set()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def config_from(args: argparse.Namespace) -> Config:
    if args.config is None and (args.port is None or args.ae_title is None
                                or args.storage_dir is None):
        raise ConfigError("PORT, AE_TITLE and --storage-dir are required without --config")
    overrides: dict[str, Any] = {}
    for value, key in ((args.port, "server.port"), (args.ae_title, "server.ae_title"),
                       (args.storage_dir, "storage.directory")):
        if value is not None:
            overrides[key] = value
    sections = file_sections(args.config)
    # Receive-only defaults for what the file does not say: console logs at warning,
    # no HTTP side.
    if "logging" not in sections:
        overrides["logging.file"] = ""
        overrides["logging.level"] = "warning"
    if "monitoring" not in sections:
        overrides["monitoring.metrics_port"] = -1
    if args.index_db:
        overrides["database.path"] = args.index_db
    if args.accept:
        overrides["storage.accepted_sop_classes"] = args.accept
    if args.naming:
        overrides["storage.naming"] = args.naming
    if args.duplicates:
        overrides["storage.duplicate_policy"] = args.duplicates
    if args.host:
        overrides["server.host"] = args.host
    if args.log_level:
        overrides["logging.level"] = args.log_level
    return load_config(args.config, overrides)


def uses_index(args: argparse.Namespace) -> bool:
    """--index-db, or a `database` section in the config file."""
    return bool(args.index_db) or "database" in file_sections(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from(args)
    except ConfigError as exc:
        print(f"store_scp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{cfg.source}: OK")
        return 0
    from pacs_server.logging import configure_logging

    try:
        configure_logging(cfg.logging)
        app = PacsApp(cfg, use_index=uses_index(args), reload_config=lambda: config_from(args))
        asyncio.run(_run(app, live=sys.stderr.isatty() and not args.quiet))
    except StartupError as exc:
        print(f"store_scp: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


async def _run(app: PacsApp, live: bool, out: TextIO = sys.stderr) -> None:
    started = time.monotonic()
    status_task: asyncio.Task[None] | None = None

    async def status_loop() -> None:
        await app.ready.wait()
        while True:
            out.write("\r" + status_line(app, time.monotonic() - started) + "\033[K")
            out.flush()
            await asyncio.sleep(0.5)

    async def announce() -> None:
        await app.ready.wait()
        print(f"store_scp: {app.cfg.server.ae_title} listening on {app.cfg.server.host}:"
              f"{app.port}, storing into {app.cfg.storage.directory}"
              f"{' (indexed)' if app.use_index else ''}", file=out, flush=True)

    announcer = asyncio.create_task(announce())
    if live:
        status_task = asyncio.create_task(status_loop())
    try:
        await app.run()
    finally:
        for task in (announcer, status_task):
            if task is not None:
                task.cancel()
        if live:
            out.write("\n")
        if app.archive is not None and app.port is not None:  # no summary if start failed
            print(summary(app, time.monotonic() - started), file=out, flush=True)


def status_line(app: PacsApp, elapsed: float) -> str:
    s = app.archive.stats if app.archive else None
    active = len(app.dicom.active()) if app.dicom else 0
    if s is None:
        return "starting"
    rate = s.stored / elapsed if elapsed > 0 else 0.0
    return (f"associations {active:3d} | instances {s.stored:7d} | "
            f"{_size(s.bytes):>9s} | {rate:7.1f}/s | duplicates {s.duplicates} | "
            f"failed {s.failed}")


def summary(app: PacsApp, elapsed: float) -> str:
    assert app.archive is not None
    s = app.archive.stats
    files, size = app.archive.files.usage()
    free = app.archive.files.free_bytes()
    rate = s.stored / elapsed if elapsed > 0 else 0.0
    return "\n".join([
        f"store_scp summary after {elapsed:.1f} s:",
        f"  received   {s.stored} instances, {_size(s.bytes)} ({rate:.1f}/s)",
        f"  duplicates {s.duplicates}, failed {s.failed}",
        f"  archive    {files} files, {_size(size)} in {app.archive.files.root}",
        f"  free disk  {_size(free)}",
    ])


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


if __name__ == "__main__":
    sys.exit(main())
