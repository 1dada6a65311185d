"""Who this process is among the processes sharing one index and one archive.

The identity is the node name (`server.node_name`, by default the host name) and, in a
worker process of a supervisor, `.w<PACS_WORKER_INDEX>`. It names the process's own
receive directory (`<archive>/.incoming/<identity>/`) and placement journal
(`<archive>/.journal/<identity>/`), and owns its leases (index/leases.py). Two
processes must never share one: give each node its own `server.node_name`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

WORKER_ENV = "PACS_WORKER_INDEX"
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def node_name(configured: str = "") -> str:
    """`configured` (checked by config), else the host name made safe for a file name."""
    if configured:
        return configured
    name = _UNSAFE.sub("-", socket.gethostname()).strip(".-") or "node"
    return name[:63]


def process_identity(configured: str = "", env: Mapping[str, str] | None = None) -> str:
    """This process's identity: the node name, plus `.w<i>` in worker process i."""
    env = os.environ if env is None else env
    worker = env.get(WORKER_ENV, "").strip()
    node = node_name(configured)
    return f"{node}.w{int(worker)}" if worker.isdigit() else node
