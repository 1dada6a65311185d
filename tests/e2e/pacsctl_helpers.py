"""Helpers of the pacsctl tests: a server process with the HTTP side and a token, and
pacsctl run as a subprocess against it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.config import transport_args
from support.scu import wait_until_responds

TOKEN = "e2e-token-0123456789abcdef"


@dataclass
class Pacs:
    proc: Any
    port: int
    http_port: int
    config: Path
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ctl(self, *args: str, check: bool = True, use_config: bool = False) -> Any:
        """Run pacsctl; with --json args the parsed output, else the CompletedProcess."""
        conn = (["--config", str(self.config)] if use_config
                else ["--url", self.url, "--token", TOKEN])
        result = subprocess.run([sys.executable, "-m", "pacs_server.pacsctl", *conn, *args],
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        if "--json" in args and result.returncode == 0:
            return json.loads(result.stdout)
        return result


def write_config(root: Path, extra: str = "") -> Path:
    path = root / "pacs_server.yaml"
    path.write_text(f"""
server:
  host: 127.0.0.1
  port: 0
  shutdown_grace: 2
storage:
  directory: {root / 'archive'}
database:
  path: {root / 'pacs.db'}
logging:
  file: ""
monitoring:
  metrics_port: 0
admin:
  token: {TOKEN}
{extra}
""", encoding="utf-8")
    return path


def start_pacs(spawn: Any, root: Path, extra: str = "", config: Path | None = None) -> Pacs:
    config = config or write_config(root, extra)
    proc = spawn([sys.executable, "-m", "pacs_server", "--config", str(config),
                  *transport_args()], root)
    started = proc.wait_for_event("server.started")
    wait_until_responds(started["port"], called=started["ae_title"])
    return Pacs(proc, int(started["port"]), int(started["metrics_port"]), config, root)
