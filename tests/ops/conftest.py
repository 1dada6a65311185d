"""Fixtures of the operations tests: a server with its HTTP side and admin token."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ops_helpers import TOKEN  # noqa: E402

from pacs_server.app import PacsApp  # noqa: E402
from pacs_server.config import Config  # noqa: E402


@pytest.fixture
async def ops_server(start_server: Callable[..., Any],
                     make_cfg: Callable[..., Config]) -> PacsApp:
    """A server with the HTTP side on an ephemeral port and an admin token."""
    app: PacsApp = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                                "admin.token": TOKEN}))
    return app


def base_url(app: PacsApp) -> str:
    assert app.metrics_port, "the HTTP side is not running"
    return f"http://127.0.0.1:{app.metrics_port}"
