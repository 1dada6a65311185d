"""Start-up reconciliation of the placement journal with the index (crafted states)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

from pacs_server.config import Config
from pacs_server.services.archive import FileCatalog
from pacs_server.services.reconcile import reconcile
from pacs_server.storage.filestore import FileStore
from support.archive import archived_files, index_rows, open_intents
from support.instances import DicomFiles
from support.scu import Scu
from support.server import RunningServer


def intent(root: Path, rel: str, name: str) -> Path:
    """An open intent, as a store killed between placing and committing leaves it."""
    link = root / ".journal" / name
    os.symlink(rel, link)
    return link


def linked_intent(root: Path, rel: str) -> Path:
    """An open intent in the form a store makes it: a hard link to the placed file."""
    return FileStore(root).journal.open(PurePosixPath(rel), root / rel)


def place(root: Path, rel: str, content: bytes) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)


async def test_open_intents_are_settled_at_start(
        start_server: Callable[..., Awaitable[RunningServer]], make_cfg: Callable[..., Config],
        dicom_files: DicomFiles, scu: Scu) -> None:
    cfg = make_cfg()
    srv = await start_server(cfg)
    root, db = srv.archive, srv.db
    first, orphan, broken, linked = (dicom_files.fresh("CT_small.dcm") for _ in range(4))
    assert all(r.ok for r in await scu.astore(srv.port, [first]))
    await asyncio.to_thread(srv.stop)
    (stored_rel,) = index_rows(db).values()
    copy_rel = "crafted/elsewhere/same-uid.dcm"

    # A complete file placed but never indexed (the state a SIGKILL leaves) ...
    place(root, "crafted/orphan.dcm", orphan.read_bytes())
    intent(root, "crafted/orphan.dcm", "a1")
    place(root, "crafted/linked.dcm", linked.read_bytes())
    assert linked_intent(root, "crafted/linked.dcm").is_file()
    # ... a file that cannot be read back ...
    place(root, "crafted/broken.dcm", broken.read_bytes()[:-100])
    intent(root, "crafted/broken.dcm", "a2")
    # ... a second copy of the stored instance under another path ...
    place(root, copy_rel, (root / stored_rel).read_bytes())
    intent(root, copy_rel, "a3")
    # ... an intent whose placement never happened, one committed, one not a path.
    intent(root, "crafted/never-placed.dcm", "a4")
    intent(root, stored_rel, "a5")
    intent(root, "../../etc/passwd", "a6")

    srv = await start_server(cfg)
    rows = index_rows(db)
    assert sorted(rows.values()) == sorted([stored_rel, "crafted/orphan.dcm",
                                            "crafted/linked.dcm"])
    files = {str(p.relative_to(root)) for p in archived_files(root)}
    assert files == set(rows.values())                       # no file without a row
    assert all((root / rel).is_file() for rel in rows.values())  # no row without a file
    assert (root / ".quarantine" / "crafted" / "broken.dcm").is_file()
    assert open_intents(root) == []
    # The orphan is a normal instance now: a retry by its sender is a duplicate.
    assert [r.status for r in await scu.astore(srv.port, [orphan])] == [0x0111]


async def test_a_file_cut_inside_a_sequence_is_quarantined_at_start(
        start_server: Callable[..., Awaitable[RunningServer]], make_cfg: Callable[..., Config],
        dicom_files: DicomFiles, scu: Scu) -> None:
    """A placed file cut short in its header (with storage.fsync off, a power loss can
    leave a renamed file short): the server starts, and the file is quarantined."""
    cfg = make_cfg()
    FileStore(cfg.storage.directory).prepare()
    root = Path(cfg.storage.directory)
    data = dicom_files.fresh("JPEG2000.dcm").read_bytes()
    cut = data.index(b"\x08\x00\x12\x21SQ") + 24        # inside (0008,2112)'s item
    place(root, "crafted/cut.dcm", data[:cut])
    intent(root, "crafted/cut.dcm", "c1")
    srv = await start_server(cfg)
    assert await scu.aecho(srv.port) == 0x0000
    assert (root / ".quarantine" / "crafted" / "cut.dcm").read_bytes() == data[:cut]
    assert archived_files(root) == [] and index_rows(srv.db) == {}
    assert open_intents(root) == []


async def test_reconcile_without_an_index_and_again(make_cfg: Callable[..., Config],
                                                    dicom_files: DicomFiles) -> None:
    """Without an index (store_scp): an intent for a present, valid file is settled,
    a broken one quarantined, and a second run finds nothing to do."""
    cfg = make_cfg()
    files = FileStore(cfg.storage.directory)
    files.prepare()
    root = files.root
    good = dicom_files.fresh("MR_small.dcm")
    place(root, "x/good.dcm", good.read_bytes())
    place(root, "x/bad.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00")
    intent(root, "x/good.dcm", "b1")
    intent(root, "x/bad.dcm", "b2")
    report = await reconcile(files, FileCatalog(files), cfg.storage)
    assert (report.intents, report.committed, report.quarantined) == (2, 1, 1)
    assert (root / "x" / "good.dcm").is_file() and not (root / "x" / "bad.dcm").exists()
    again = await reconcile(files, FileCatalog(files), cfg.storage)
    assert again.intents == 0
