"""The one config builder: a Config whose archive and index live under one directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pacs_server.config import Config, load_config

SERVER_AE = "PACS"

# Fast but crash-unsafe storage (no fsync, SQLite synchronous=normal), for tests that
# store many instances and are not about durability.
FAST_STORAGE: dict[str, Any] = {"storage.fsync": False, "database.synchronous": "normal"}


def server_config(root: Path, overrides: dict[str, Any] | None = None, *,
                  path: str | Path | None = None) -> Config:
    """Archive in <root>/archive, index in <root>/pacs.db, port 0 on 127.0.0.1, AE title
    PACS, no log file, no metrics endpoint, `server.transport` from $PACS_TRANSPORT if
    set; then `overrides` (dotted keys, or top-level
    ones such as `peers`), on top of the YAML file `path` if given."""
    values: dict[str, Any] = {
        "server.port": 0,
        "server.host": "127.0.0.1",
        "server.ae_title": SERVER_AE,
        "storage.directory": str(root / "archive"),
        "database.path": str(root / "pacs.db"),
        "logging.file": "",
        "monitoring.metrics_port": -1,
    }
    # The interop subset runs a second time on pynetdicom's own reactors (.ci/run).
    if os.environ.get("PACS_TRANSPORT"):
        values["server.transport"] = os.environ["PACS_TRANSPORT"]
    values.update(overrides or {})
    return load_config(path, values)


def transport_args() -> list[str]:
    """`--transport` for a `python -m pacs_server` process when $PACS_TRANSPORT is set."""
    transport = os.environ.get("PACS_TRANSPORT")
    return ["--transport", transport] if transport else []


def peer(ae_title: str, port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """One entry of the `peers` list (a C-MOVE destination)."""
    return {"ae_title": ae_title, "host": host, "port": port}
