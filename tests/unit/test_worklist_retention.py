"""services/worklist_retention.py: finished items removed after retention_days, at start
and periodically; the section reloads; a negative value is a configuration error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pacs_server.config import WorklistConfig, load_config
from pacs_server.errors import ConfigError
from pacs_server.services.worklist_retention import WorklistRetention
from support.worklist import finished_days_ago, worklist_repository


async def test_purges_at_start_and_follows_reload(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    async with worklist_repository(db, create=True) as repo:
        cols = {"patient_id": "P", "start_date": "20241220"}
        ids = await repo.add([({**cols, "accession_number": f"A{i}"}, json.dumps({}))
                              for i in range(3)])
        for acc in ("A0", "A1"):
            assert await repo.set_step_status("", acc, "", "COMPLETED") == 1
        # A0 finished 40 days ago, A1 10 days ago.
        await finished_days_ago(db, {ids[0]: 40, ids[1]: 10})
        retention = WorklistRetention(repo, WorklistConfig(), interval_s=0.05)
        with capture_logs() as logs:
            await retention.start()
            for _ in range(100):
                if any(e["event"] == "worklist.retention" for e in logs):
                    break
                await asyncio.sleep(0.01)
            retention.reconfigure(WorklistConfig(retention_days=5))
            for _ in range(200):
                if await repo.count() == 1:
                    break
                await asyncio.sleep(0.01)
            await retention.close()
        passes = [e for e in logs if e["event"] == "worklist.retention"]
        assert passes[0]["removed"] == 1 and passes[0]["retention_days"] == 30
        assert any(e["removed"] == 1 and e["retention_days"] == 5 for e in passes[1:])
        assert await repo.get(ids[2]) is not None          # never finished: kept


def test_retention_days_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("worklist:\n  retention_days: -1\n")
    with pytest.raises(ConfigError, match=r"worklist\.retention_days: must not be negative"):
        load_config(path)
    path.write_text("worklist:\n  retention_days: 7\n")
    assert load_config(path).worklist.retention_days == 7
