"""Fixtures of the integration tests: the modality's MPPS SCU on the `server`, and the
server's MPPS and worklist tables through repositories of the test's own on its index
(a test never holds the server's objects)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pacs_server.index.mpps import MppsRepository
from pacs_server.index.worklist import WorklistRepository
from support.mpps import Modality, step_repository
from support.scu import Scu
from support.server import RunningServer
from support.worklist import worklist_repository


@pytest.fixture
def modality(server: RunningServer, scu: Scu) -> Modality:
    return Modality(server.port, scu)


@pytest.fixture
async def steps(server: RunningServer) -> AsyncIterator[MppsRepository]:
    """The server's `mpps` table."""
    async with step_repository(server.db) as repo:
        yield repo


@pytest.fixture
async def worklist(server: RunningServer) -> AsyncIterator[WorklistRepository]:
    """The server's worklist items."""
    async with worklist_repository(server.db) as repo:
        yield repo
