"""`server.workers: 2` as the e2e tests start it: the configuration, the start-up
checks, the HTTP side and associations held open (tests/e2e/test_workers*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.http import http_get
from support.scu import Scu

TOKEN = "workers-token-0123456789abcdef"


def write_config(root: Path, server: str = "", extra: str = "") -> Path:
    path = root / "pacs.yaml"
    path.write_text(f"""
server:
  workers: 2
  shutdown_grace: 5
{server}
monitoring:
  metrics_port: 0
admin:
  token: {TOKEN}
{extra}""", encoding="utf-8")
    return path


def start(run_pacs: Callable[..., Any], config: Path) -> Any:
    server = run_pacs("--metrics-port", "0", config=config)
    started = server.wait_for_event("server.started")
    assert started["workers"] == 2
    # What the workers serve, not the supervisor's own (empty) DICOM side.
    assert {"Verification", "Storage", "Query/Retrieve FIND",
            "Modality Performed Procedure Step"} <= set(started["services"]), started
    server.http = f"http://127.0.0.1:{started['metrics_port']}"
    server.pids = {e["worker"]: e["pid"] for e in server.events()
                   if e["event"] == "worker.started"}
    assert sorted(server.pids) == [1, 2]
    return server


def get(server: Any, path: str) -> Any:
    status, body = asyncio.run(http_get(server.http, path, token=TOKEN))
    assert status == 200, body
    return body


class Held:
    """Associations kept open until `release()`."""

    def __init__(self) -> None:
        self.assocs: list[Any] = []

    def open(self, port: int, calling: str) -> Any:
        assoc = Scu(calling).ae().associate("127.0.0.1", port, ae_title="PACS")
        self.assocs.append(assoc)
        return assoc

    def release(self) -> None:
        for assoc in self.assocs:
            if assoc.is_established:
                assoc.release()
