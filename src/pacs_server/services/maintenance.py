"""Archive maintenance for operators: verify the index against the files, import files.

`verify` checks that every indexed instance has its file with the indexed size and that
every file under the archive is indexed. `--repair` re-indexes unindexed files through
the archive's store path (as a C-STORE would, so the duplicate policy applies) and
records indexed instances whose file is missing or truncated (index/admin.py
`missing_instances`; the rows stay, the report names them). `reindex` imports a
directory of DICOM files the same way.

Both are async generators of progress records, then the report (`done: True`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from pacs_server.errors import DuplicateInstance, InvalidRequest, PacsError
from pacs_server.index.admin import AdminRepository
from pacs_server.index.inventory import Inventory
from pacs_server.index.repository import IndexRepository
from pacs_server.services.archive import ArchiveService, StoreOutcome
from pacs_server.storage.filestore import PRIVATE_DIRS

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
PROGRESS_EVERY = 200
IMPORT_AE = "PACSCTL"


def _archive_files(root: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every file under the archive (its private
    directories excluded: receive files, journals, quarantine, identity locks)."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in PRIVATE_DIRS]
        for name in filenames:
            full = Path(dirpath) / name
            try:
                out[full.relative_to(root).as_posix()] = full.stat().st_size
            except OSError:
                continue
    return out


class Maintenance:
    """Verify and reindex over the running server's archive and index."""

    def __init__(self, archive: ArchiveService, repo: IndexRepository,
                 admin: AdminRepository, inventory: Inventory, run: Runner) -> None:
        self._archive = archive
        self._repo = repo
        self._admin = admin
        self._inventory = inventory
        self._run = run

    async def verify(self, repair: bool) -> AsyncIterator[dict[str, Any]]:
        root = self._archive.files.root
        on_disk = await asyncio.to_thread(_archive_files, root)
        total = (await self._repo.counts())["instances"] + len(on_disk)
        yield {"phase": "index", "done": False, "checked": 0, "total": total}
        missing: list[dict[str, Any]] = []
        truncated: list[dict[str, Any]] = []
        checked = 0
        async for rows in self._inventory.indexed_files():
            for uid, rel, size in rows:
                found = on_disk.pop(rel, None)
                if found is None:
                    missing.append({"sop_instance_uid": uid, "path": rel})
                elif found != size:
                    truncated.append({"sop_instance_uid": uid, "path": rel,
                                      "indexed_size": size, "file_size": found})
                checked += 1
                if checked % PROGRESS_EVERY == 0:
                    yield {"phase": "index", "done": False, "checked": checked, "total": total}
        unindexed: list[dict[str, Any]] = [{"path": rel, "size": size}
                                           for rel, size in sorted(on_disk.items())]
        yield {"phase": "files", "done": False, "checked": checked, "total": total}
        report: dict[str, Any] = {"done": True, "checked": checked + len(unindexed),
                                  "missing": missing, "truncated": truncated,
                                  "unindexed": unindexed, "repaired": repair}
        if repair:
            await self._admin.mark_missing(
                [(m["sop_instance_uid"], m["path"], "missing") for m in missing]
                + [(t["sop_instance_uid"], t["path"], "truncated") for t in truncated])
            imported: list[dict[str, Any]] = []
            failed: list[dict[str, Any]] = []
            for item in unindexed:
                outcome = await self._import(root / item["path"])
                if "error" not in outcome:
                    await self._drop_copy(item["path"], outcome)
                (failed if "error" in outcome else imported).append(
                    {"path": item["path"], **outcome})
            report.update(reindexed=imported, not_reindexed=failed,
                          marked=len(missing) + len(truncated))
        report["ok"] = not (missing or truncated or unindexed)
        yield report

    async def reindex(self, directory: str) -> AsyncIterator[dict[str, Any]]:
        root = Path(directory)
        if not root.is_absolute() or "\x00" in directory:
            raise InvalidRequest(f"directory: {directory!r} must be an absolute path "
                                 "on the server")
        files = await asyncio.to_thread(self._import_list, root)
        yield {"done": False, "checked": 0, "total": len(files)}
        counts = {"stored": 0, "already_stored": 0, "duplicates": 0, "skipped": 0,
                  "failed": 0}
        problems: list[dict[str, str]] = []
        for n, path in enumerate(files, 1):
            outcome = await self._import(path)
            key = outcome.get("outcome", "failed")
            counts[key] = counts.get(key, 0) + 1
            if "error" in outcome:
                problems.append({"path": str(path), "error": outcome["error"]})
            if n % 20 == 0 or n == len(files):
                yield {"done": False, "checked": n, "total": len(files)}
        yield {"done": True, "files": len(files), **counts, "problems": problems[:100]}

    async def _drop_copy(self, rel: str, outcome: dict[str, Any]) -> None:
        """After re-indexing a file found outside its layout path, the archive holds the
        indexed copy at the layout path: remove the stray original."""
        indexed = await self._repo.instance_path(outcome["sop_instance_uid"])
        files = self._archive.files
        if indexed and indexed != rel and await asyncio.to_thread(files.exists, indexed):
            await asyncio.to_thread(files.remove, rel)
            outcome["moved_to"] = indexed

    def _import_list(self, root: Path) -> list[Path]:
        if not root.is_dir():
            raise InvalidRequest(f"directory: {root} is not a directory")
        archive_root = self._archive.files.root.resolve()
        if root.resolve() == archive_root or archive_root in root.resolve().parents:
            raise InvalidRequest("directory: inside the archive; use verify --repair")
        return sorted(p for p in root.rglob("*") if p.is_file())

    async def _import(self, path: Path) -> dict[str, Any]:
        """Store one Part-10 file as a C-STORE would; a plain dict with the outcome."""
        try:
            meta = await asyncio.to_thread(read_file_meta_info, path)
            ts = str(meta.get("TransferSyntaxUID", ""))
            sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
            if not ts:
                return {"outcome": "skipped", "error": "no transfer syntax in the File Meta"}
            source = str(meta.get("SourceApplicationEntityTitle", "") or IMPORT_AE).strip()
            stored = await asyncio.to_thread(self._archive.receive, path, ts, sop_class,
                                             source, self._run)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            return {"outcome": "skipped", "error": f"not a DICOM Part-10 file: {exc}"[:200]}
        except PacsError as exc:
            kind = "duplicates" if isinstance(exc, DuplicateInstance) else "failed"
            return {"outcome": kind, "error": str(exc)}
        outcome = ("already_stored" if stored.outcome is StoreOutcome.ALREADY_STORED
                   else "stored")
        return {"outcome": outcome, "sop_instance_uid": stored.sop_instance_uid}
