"""What an archive holds: its files (outside its private directories) and its SQLite
index rows.

The index is read with the stdlib sqlite3 module on a read-only connection, as any
other reader of the file would, never through the app's own objects.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from support.instances import sop_uid
from support.polling import wait_until

LEVELS = ("patients", "studies", "series", "instances")


# The archive's own directories at its root: scratch, placement intents, quarantine.
PRIVATE_DIRS = (".incoming", ".journal", ".quarantine", ".nodes")


def archived_files(root: Path) -> list[Path]:
    """Every file under the archive root except in its private directories (.incoming
    scratch, .journal intents, .quarantine)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == Path(root):
            dirnames[:] = [d for d in dirnames if d not in PRIVATE_DIRS]
        out.extend(Path(dirpath) / f for f in filenames)
    return sorted(out)


def archived_by_uid(root: Path) -> dict[str, Path]:
    """SOP Instance UID (from each file's File Meta) → archived file."""
    return {sop_uid(p): p for p in archived_files(root)}


def incoming_files(root: Path) -> list[Path]:
    """The files in the archive's .incoming scratch directories (every process's)."""
    incoming = root / ".incoming"
    return sorted(p for p in incoming.rglob("*") if not p.is_dir()) if incoming.is_dir() else []


def open_intents(root: Path) -> list[Path]:
    """The placement intents left in the archive's journals (every process's)."""
    journal = root / ".journal"
    return sorted(p for p in journal.rglob("*") if not p.is_dir()) if journal.is_dir() else []


def query_index(db: Path, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
    """Rows of one SELECT on the SQLite index file, on a read-only connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, tuple(params)).fetchall()
    finally:
        con.close()


def index_rows(db: Path) -> dict[str, str]:
    """SOP Instance UID → relative path of every indexed instance."""
    return {r["sop_instance_uid"]: r["path"]
            for r in query_index(db, "SELECT sop_instance_uid, path FROM instances")}


def indexed_instance(db: Path, uid: str) -> sqlite3.Row | None:
    """The `instances` row of one SOP Instance UID, if indexed."""
    rows = query_index(db, "SELECT * FROM instances WHERE sop_instance_uid = ?", [uid])
    return rows[0] if rows else None


def indexed_path(root: Path, db: Path, uid: str) -> Path | None:
    """Where the index says an instance is archived (None when it is not indexed)."""
    row = indexed_instance(db, uid)
    return root / row["path"] if row is not None else None


def index_counts(db: Path) -> dict[str, int]:
    """Rows per level and the sum of instance sizes (`bytes`)."""
    out = {level: int(query_index(db, f"SELECT count(*) FROM {level}")[0][0])
           for level in LEVELS}
    out["bytes"] = int(query_index(db, "SELECT coalesce(sum(size), 0) FROM instances")[0][0])
    return out


def wait_for_rows(db: Path, n: int, timeout: float = 15.0) -> dict[str, str]:
    """`index_rows` once the index holds at least `n` instances (a subprocess server
    indexes after storescu has moved on)."""
    rows: dict[str, str] = {}

    def enough() -> bool:
        nonlocal rows
        try:
            rows = index_rows(db)
        except sqlite3.Error:
            return False
        return len(rows) >= n

    wait_until(enough, timeout, f"{n} index rows in {db}")
    return rows
