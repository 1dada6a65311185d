"""Command line of `pacs_server`: parse arguments, build the Config once, run the app.

Exit codes: 0 clean stop, 1 start-up failure (port busy, storage, database),
2 configuration error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from pacs_server import __version__
from pacs_server.config import Config, load_config
from pacs_server.errors import ConfigError, ExitCode, StartupError

EXIT_STARTUP = ExitCode.STARTUP
EXIT_CONFIG = ExitCode.CONFIG


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pacs_server", allow_abbrev=False,
        epilog="administration: pacs_server worklist add|list|show|remove ... "
               "(pacs_server worklist --help); pacs_server mpps list|show "
               "(pacs_server mpps --help); pacs_server hash-password (a DICOMweb user's "
               "password_hash, from stdin or a prompt)",
        description="DICOM archive: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, Worklist, MPPS, "
                    "Storage Commitment.")
    p.add_argument("command", nargs="?", default="run",
                   choices=["run", "check-config", "init-db", "worklist"],
                   help="run the server (default), validate the config, "
                        "create/upgrade the index, or manage the worklist")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    p.add_argument("--port", type=int, help="DICOM port (overrides server.port)")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--ae-title", help="our AE title (overrides server.ae_title)")
    p.add_argument("--storage-dir", help="archive root (overrides storage.directory)")
    p.add_argument("--db", metavar="FILE", help="SQLite index file (overrides database.path)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="overrides logging.level")
    p.add_argument("--log-file", help="JSON log file, '' for none (overrides logging.file)")
    p.add_argument("--metrics-port", type=int,
                   help="port of the HTTP side (/metrics, /status, /healthz, /api); "
                        "-1 disables it (overrides monitoring.metrics_port)")
    p.add_argument("--transport", choices=["events", "stock"],
                   help="association reactors (overrides server.transport)")
    p.add_argument("--version", action="version", version=f"pacs_server {__version__}")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "port": "server.port", "host": "server.host", "ae_title": "server.ae_title",
        "storage_dir": "storage.directory", "db": "database.path",
        "log_level": "logging.level", "log_file": "logging.file",
        "metrics_port": "monitoring.metrics_port", "transport": "server.transport",
    }
    return {key: getattr(args, attr) for attr, key in mapping.items()
            if getattr(args, attr) is not None}


def fail(message: str, code: int) -> int:
    print(f"pacs_server: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-password"]:
        return hash_password_command(argv[1:])
    if argv[:1] == ["mpps"]:
        from pacs_server import mpps_cli

        return mpps_cli.main(argv[1:])
    if "worklist" in argv:
        after = argv[argv.index("worklist") + 1:]
        if "-h" in after or "--help" in after:      # the command's own help, not ours
            from pacs_server.worklist_cli import build_parser as worklist_parser

            worklist_parser().parse_args([a for a in after if not a.startswith("-")][:1]
                                         + ["--help"])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "worklist":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    overrides = overrides_from(args)

    def reload() -> Config:
        return load_config(args.config, overrides)

    try:
        cfg = reload()
    except ConfigError as exc:
        return fail(str(exc), EXIT_CONFIG)
    if args.command == "worklist":
        from pacs_server.worklist_cli import main as worklist_main

        return worklist_main(rest, cfg)
    if args.command == "check-config":
        print(f"{cfg.source}: OK")
        return 0
    return run(cfg, reload, init_only=args.command == "init-db",
               source=(args.config, overrides))


def run(cfg: Config, reload: Any = None, init_only: bool = False,
        source: tuple[str | None, dict[str, Any]] = (None, {})) -> int:
    """Run the server (or just migrate the index) with a built config; returns the exit code.

    `source` (the config file and the command line's overrides) is what worker
    processes build their configuration from (`server.workers` > 1).
    """
    from pacs_server.logging import configure_logging

    try:
        configure_logging(cfg.logging)
        if init_only:
            asyncio.run(_init_db(cfg))
            print(f"index ready: {cfg.database.url or cfg.database.path}")
            return 0
        if cfg.server.worker_count > 1:
            from pacs_server.workers.supervisor import run_supervisor

            return run_supervisor(cfg, reload or (lambda: cfg), *source)
        from pacs_server.app import PacsApp

        asyncio.run(PacsApp(cfg, reload_config=reload).run())
    except StartupError as exc:
        return fail(str(exc), EXIT_STARTUP)
    except KeyboardInterrupt:
        return 0
    return 0


async def _init_db(cfg: Config) -> None:
    from pacs_server.index.engine import create_engine, migrate

    engine = create_engine(cfg.database)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())


def hash_password_command(argv: list[str]) -> int:
    """`pacs_server hash-password`: print the hash of a password read from stdin (one
    line) or typed at a prompt, for `dicomweb.users[].password_hash`."""
    import getpass

    from pacs_server.passwords import hash_password

    if argv:
        print("usage: pacs_server hash-password  (the password on stdin or at the prompt)",
              file=sys.stderr)
        return ExitCode.CONFIG
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("pacs_server: the passwords differ", file=sys.stderr)
            return ExitCode.CONFIG
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("pacs_server: empty password", file=sys.stderr)
        return ExitCode.CONFIG
    print(hash_password(password))
    return ExitCode.OK
