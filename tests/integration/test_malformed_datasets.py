"""Never acknowledge what cannot be read back: mutated datasets over real sockets.

A bounded, seeded fuzz: mutations of pydicom's test files (tests/support/mutations.py)
are sent by a pynetdicom SCU to a running server, and dcmtk's dcmdump, an independent
parser, judges each one. A dataset dcmdump calls malformed must get a failure status
with an Error Comment, and leave nothing in the archive, the index or `.incoming`.
One dcmdump reads cleanly must be stored, unless it breaks a rule dcmdump does not
enforce (`STRICTER`) or an attribute the index needs (0xA900).

PACS_FUZZ_CASES (default 300) and PACS_FUZZ_SEED choose the run; scripts/fuzz_datasets
runs thousands. PACS_FUZZ_REPORT names a JSON file for the tally.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pacs_server.config import Config
from support.archive import archived_files, incoming_files, index_rows
from support.dcmtk import dcmtk_path
from support.instances import DicomFiles
from support.mutations import (
    cases,
    dcmdump_verdicts,
    load_sample,
    samples_by_name,
    stricter_reason,
    write_case,
)
from support.polling import wait_until
from support.scu import SUCCESS, Scu, send
from support.server import RunningServer

DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
CASES = int(os.environ.get("PACS_FUZZ_CASES", "300"))
SEED = int(os.environ.get("PACS_FUZZ_SEED", "20261201"))


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in archived_files(root)}


@pytest.mark.dcmtk
@pytest.mark.timeout(600 + CASES)
async def test_mutated_datasets_are_never_acknowledged(
        start_server: Callable[..., Awaitable[RunningServer]], make_cfg: Callable[..., Config],
        tmp_path: Path, scu: Scu) -> None:
    dcmdump = dcmtk_path("dcmdump")
    assert dcmdump is not None
    # replace: a well-formed mutation of an instance already stored is stored again.
    srv = await start_server(make_cfg({"storage.duplicate_policy": "replace"}))
    root, db = srv.archive, srv.db
    samples = samples_by_name()
    work = tmp_path / "cases"
    work.mkdir()
    written = [(case, write_case(case, samples[case.sample], work / f"{n:05d}.dcm"))
               for n, case in enumerate(cases(SEED, CASES))]
    verdicts = dcmdump_verdicts(dcmdump, [path for _, path in written])
    todo = [(case, path, verdict)
            for (case, path), verdict in zip(written, verdicts, strict=True)]
    contexts = sorted({(samples[c.sample].sop_class, c.transfer_syntax) for c, _, _ in todo})
    tally: Counter[str] = Counter()
    failures: list[str] = []

    def run() -> None:
        with scu.associate(srv.port, [(sop, [ts]) for sop, ts in contexts]) as assoc:
            for case, path, verdict in todo:
                before, rows = _snapshot(root), index_rows(db)
                result = send(assoc, path)
                if verdict.malformed:
                    tally["malformed"] += 1
                    if result.ok or not result.comment:
                        failures.append(f"{case.label}: {result}")
                    elif _snapshot(root) != before or index_rows(db) != rows:
                        failures.append(f"{case.label}: refused but archived")
                    else:
                        tally["malformed refused"] += 1
                elif result.ok:
                    tally["well-formed stored"] += 1
                else:
                    kind = "warned" if verdict.warned else "clean"
                    tally[f"dcmdump {kind}, refused"] += 1
                    comment = result.comment or ""
                    allowed = (verdict.warned or result.status == DOES_NOT_MATCH
                               or (result.status == CANNOT_UNDERSTAND
                                   and stricter_reason(comment)))
                    if not allowed:
                        failures.append(f"{case.label}: dcmdump reads it, {result}")
                path.unlink()
            tally["cases"] = len(todo)
        wait_until(lambda: not incoming_files(root), 5, ".incoming emptied")
        if os.environ.get("PACS_FUZZ_REPORT"):
            Path(os.environ["PACS_FUZZ_REPORT"]).write_text(
                json.dumps({"seed": SEED, **tally}, indent=2) + "\n")

    await asyncio.to_thread(run)
    assert not failures, "\n".join(failures[:20])
    assert tally["malformed refused"] > CASES // 2 and tally["well-formed stored"] > 0, tally
    assert await scu.aecho(srv.port) == SUCCESS


async def test_trailing_garbage_and_junk_in_a_sequence_are_refused(
        server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> None:
    """The two cases of the issue, one by one: 0xC000 naming the tag and offset."""
    ct = load_sample("CT_small.dcm")
    at = ct.body.index(b"\x10\x00\x02\x10SQ\x00\x00")       # (0010,1002), defined length
    (length,) = struct.unpack_from("<I", ct.body, at + 8)
    end = at + 12 + length
    junk = (ct.body[:at + 8] + struct.pack("<I", length + 16) + ct.body[at + 12:end]
            + b"\x5a" * 16 + ct.body[end:])
    paths = [dicom_files.raw(body, sop_class=ct.sop_class, ts=ct.transfer_syntax)
             for body in (ct.body + b"\x01" * 16, junk)]
    results = await scu.astore(server.port, paths)
    assert [r.status for r in results] == [CANNOT_UNDERSTAND] * 2
    assert results[0].comment is not None and f"offset {len(ct.body)}" in results[0].comment
    assert results[1].comment is not None and "(0010,1002)" in results[1].comment
    assert archived_files(server.archive) == []
