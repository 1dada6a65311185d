"""SIGKILL in the middle of a 4-association ingest, then restart: nothing left behind.

After each restart: every acknowledged instance is indexed and its file present, no
file without a row, no row without a file, no open intent, nothing partial (every
archived file passes the structure check), and `.incoming` is empty.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacs_server.errors import PacsError
from pacs_server.services.reconcile import check_file
from support.archive import archived_files, incoming_files, index_rows, open_intents
from support.instances import DicomFiles, sop_uid
from support.scu import Scu, contexts_for, send

ASSOCIATIONS = 4
PER_ASSOCIATION = 80
ROUNDS = 3
SEED = 20261201


class Sender(threading.Thread):
    """Sends its files over one association until done or the server dies.

    A store without a response (status -1) means the connection is gone: the sender
    stops there. `is_established` alone does not tell in time: pynetdicom clears it
    in the association's reactor thread, which the next send may pause before it
    runs, and that send would then wait out the whole DIMSE timeout.
    """

    def __init__(self, port: int, paths: list[Path], acked: set[str],
                 lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.port, self.paths, self.acked, self.lock = port, paths, acked, lock

    def run(self) -> None:
        try:
            with Scu(f"SENDER{id(self) % 1000}").associate(
                    self.port, contexts_for(self.paths[:1])) as assoc:
                for path in self.paths:
                    if not assoc.is_established:
                        return
                    result = send(assoc, path)
                    if result.status == -1:
                        return      # no response: the server was killed under us
                    if result.ok:
                        with self.lock:
                            self.acked.add(path.stem.rsplit("-", 1)[1])
        except (ConnectionError, RuntimeError, OSError):
            return          # the server was killed under us


def check_archive(root: Path, db: Path, acked: set[str]) -> dict[str, str]:
    rows = index_rows(db)
    missing = acked - rows.keys()
    assert not missing, f"acknowledged but not indexed: {sorted(missing)[:5]}"
    on_disk = {str(p.relative_to(root)) for p in archived_files(root)}
    assert on_disk == set(rows.values()), (
        f"files without rows: {sorted(on_disk - set(rows.values()))[:5]}, "
        f"rows without files: {sorted(set(rows.values()) - on_disk)[:5]}")
    assert open_intents(root) == [], "open intents after start"
    assert incoming_files(root) == []
    for rel in rows.values():
        try:
            check_file(root / rel)
        except PacsError as exc:  # pragma: no cover - the assertion reports it
            raise AssertionError(f"{rel} is not a complete dataset: {exc}") from None
    return rows


def test_sigkill_during_ingest_leaves_nothing_behind(
        run_pacs: Callable[..., Any], tmp_path: Path, dicom_files: DicomFiles) -> None:
    rng = random.Random(SEED)
    root, db = tmp_path / "archive", tmp_path / "pacs.db"
    acked: set[str] = set()
    lock = threading.Lock()
    reconciled: list[dict[str, Any]] = []
    for round_no in range(ROUNDS):
        batches = []
        for a in range(ASSOCIATIONS):
            batch = []
            for _ in range(PER_ASSOCIATION):
                path = dicom_files.generated(directory=tmp_path / f"r{round_no}a{a}")
                uid = sop_uid(path)
                batch.append(path.rename(path.with_name(f"{path.stem}-{uid}.dcm")))
            batches.append(batch)
        server = run_pacs()
        senders = [Sender(server.port, b, acked, lock) for b in batches]
        for s in senders:
            s.start()
        time.sleep(rng.uniform(0.3, 1.5))
        server.kill()                                   # SIGKILL
        for s in senders:
            s.join(30)
        server = run_pacs()                             # restart: reconcile, then accept
        for event in server.events():
            if event.get("event") == "storage.reconciled":
                reconciled.append(event)
        server.stop()
        check_archive(root, db, acked)
    assert len(acked) > ROUNDS * 10, f"only {len(acked)} instances acknowledged"
    print(f"acknowledged {len(acked)}; reconciled at restart: {reconciled}")
