"""index/backup.py: the destination rules and the PostgreSQL answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_server.config import DatabaseConfig
from pacs_server.errors import ConflictingRequest, InvalidRequest
from pacs_server.index.backup import backup_sqlite, check_destination


def test_postgresql_says_pg_dump(tmp_path: Path) -> None:
    cfg = DatabaseConfig(url="postgresql+asyncpg://pacs@db/pacs")
    with pytest.raises(InvalidRequest, match="back it up with pg_dump"):
        backup_sqlite(cfg, str(tmp_path / "x.db"))


def test_destination_rules(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="must be an absolute path"):
        check_destination("relative.db")
    with pytest.raises(InvalidRequest, match="does not exist"):
        check_destination(str(tmp_path / "no" / "x.db"))
    (tmp_path / "taken.db").write_bytes(b"")
    with pytest.raises(ConflictingRequest, match="exists"):
        check_destination(str(tmp_path / "taken.db"))
    assert check_destination(str(tmp_path / "new.db")) == tmp_path / "new.db"
