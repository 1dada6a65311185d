"""Fixtures of the operations tests: a server with its HTTP side and admin token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from pacs_server.config import Config
from support.http import TOKEN
from support.server import RunningServer


@pytest.fixture
async def ops_server(start_server: Callable[..., Awaitable[RunningServer]],
                     make_cfg: Callable[..., Config]) -> RunningServer:
    """A server with the HTTP side on an ephemeral port and an admin token."""
    return await start_server(make_cfg({"monitoring.metrics_port": 0, "admin.token": TOKEN}))
