"""Several server processes on one index and one archive directory (`python -m
pacs_server` subprocesses): two nodes on PostgreSQL, and two processes on one SQLite file.

What one node acknowledged, the other finds and sends at once; the same instance sent
to both at the same moment ends as one file and one row; the worklist and the admin
API's AE titles are shared; singleton jobs run once; a node that starts leaves a
sibling's live receive files alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacs_server.control import ADMIN_REFRESH_S
from pacs_server.index.engine import MIGRATIONS
from support.archive import archived_files, incoming_files, index_rows, open_intents
from support.dcmtk import Dcmtk
from support.http import TOKEN, http_call
from support.instances import DicomFiles, sop_uid
from support.mpps import CONTEXTS as MPPS_CONTEXTS
from support.mpps import MPPS, Modality, create_attributes, final_modification
from support.polling import wait_until
from support.scu import (
    SUCCESS,
    GetScu,
    Scu,
    contexts_for,
    identifier,
    send,
    throttle,
    wait_until_responds,
)
from support.worklist import accessions, item, query
from support.worklist import find as mwl_find

pytestmark = pytest.mark.timeout(600)

STARTUP_TIMEOUT = 30.0
ServerProcess = Any    # tests/e2e/conftest.py's, handed out by the `spawn` fixture

DUPLICATE = 0x0111
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class Nodes:
    """Starts `python -m pacs_server` nodes sharing `root`/archive and one index."""

    def __init__(self, root: Path, spawn: Callable[..., ServerProcess],
                 database: dict[str, Any], **sections: dict[str, Any]) -> None:
        self.root = root
        self.archive = root / "archive"
        self._spawn = spawn
        self._database = database
        self._sections = sections

    def config(self, name: str, **sections: dict[str, Any]) -> Path:
        cfg: dict[str, Any] = {
            "server": {"node_name": name, "host": "127.0.0.1", "port": 0},
            "storage": {"directory": str(self.archive)},
            "database": self._database,
            "logging": {"file": ""},
            "monitoring": {"metrics_port": -1},
        }
        for merged in (self._sections, sections):
            for key, values in merged.items():
                cfg[key] = {**cfg.get(key, {}), **values}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    def launch(self, name: str, *command: str, **sections: dict[str, Any]) -> ServerProcess:
        """`python -m pacs_server --config <name>.yaml [command]`, not waited for."""
        path = self.config(name, **sections)
        return self._spawn([sys.executable, "-m", "pacs_server", "--config", str(path),
                            *command], self.root)

    def start(self, name: str, **sections: dict[str, Any]) -> ServerProcess:
        return self.started(self.launch(name, **sections), name)

    def started(self, proc: ServerProcess, name: str) -> ServerProcess:
        """`proc` once it listens (its `port` and `http_port` set)."""
        started = proc.wait_for_event("server.started")
        assert started["identity"] == name
        proc.port = int(started["port"])
        proc.http_port = started.get("metrics_port")  # type: ignore[attr-defined]
        wait_until_responds(proc.port, STARTUP_TIMEOUT)
        return proc


@pytest.fixture
def pg_nodes(tmp_path: Path, spawn: Callable[..., ServerProcess],
             postgres_url: str) -> Iterator[Nodes]:
    yield Nodes(tmp_path, spawn, {"url": postgres_url})


async def pg_fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def race(scu: Scu, ports: list[int], *paths: Path) -> list[int]:
    """Send `paths[i]` (or the one path given) to `ports[i]`, all at the same moment:
    each sender associates, waits at a barrier, then sends its C-STORE. Returns the
    statuses, in port order."""
    barrier = threading.Barrier(len(ports))
    files = list(paths) if len(paths) > 1 else list(paths) * len(ports)

    def one(i: int) -> int:
        with scu.associate(ports[i], contexts_for([files[i]])) as assoc:
            barrier.wait(30)
            return send(assoc, files[i]).status

    with ThreadPoolExecutor(len(ports)) as pool:
        return list(pool.map(one, range(len(ports))))


def race_once(scu: Scu, ports: list[int], path: Path, policy: str, round_: int) -> None:
    """`path` sent to every port at once: stored once, the others answered as
    `policy` answers a duplicate (reject: 0x0111, ignore: Success)."""
    statuses = race(scu, ports, path)
    duplicate = DUPLICATE if policy == "reject" else SUCCESS
    expected = sorted([SUCCESS] + [duplicate] * (len(ports) - 1))
    assert sorted(statuses) == expected, f"round {round_}: {statuses}"


def one_file_per_row(nodes: Nodes, url: str, sent: list[Path]) -> list[asyncpg.Record]:
    """One row per instance sent, and one file per row, no other; the rows."""
    rows = asyncio.run(pg_fetch(url, "SELECT sop_instance_uid, path FROM instances"))
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sop_uid(p) for p in sent)
    files = {str(p.relative_to(nodes.archive)) for p in archived_files(nodes.archive)}
    assert files == {r["path"] for r in rows}
    return rows


def race_n_sets(scu: Scu, ports: list[int], uid: str, finals: tuple[str, ...]) -> list[Dataset]:
    """A final N-SET of step `uid` to each port at the same moment (`finals[i]` to
    `ports[i]`, each associated first, then a barrier). Returns the status datasets."""
    barrier = threading.Barrier(len(ports))

    def one(i: int) -> Dataset:
        with scu.associate(ports[i], MPPS_CONTEXTS) as assoc:
            barrier.wait(30)
            return assoc.send_n_set(final_modification(finals[i]), MPPS, uid)[0]

    with ThreadPoolExecutor(len(ports)) as pool:
        return list(pool.map(one, range(len(ports))))


def no_leftovers(archive: Path) -> None:
    """Nothing in any receive directory, no intent open, nothing set aside."""
    assert incoming_files(archive) == []
    assert open_intents(archive) == []
    assert not (archive / ".quarantine").exists()


def _head() -> str:
    acfg = AlembicConfig()
    acfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(acfg).get_current_head()
    assert head is not None
    return head


def _schema_version(database: dict[str, Any]) -> list[str]:
    if "url" in database:
        rows = asyncio.run(pg_fetch(database["url"], "SELECT version_num FROM alembic_version"))
        return [r["version_num"] for r in rows]
    with sqlite3.connect(database["path"]) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_starting_together_on_a_fresh_database_all_come_up(
        tmp_path: Path, spawn: Callable[..., ServerProcess], request: pytest.FixtureRequest,
        backend: str) -> None:
    """Several processes migrating one empty database at the same moment take turns
    (SQLite: the writer lock file; PostgreSQL: an advisory lock): one creates the schema,
    the others find it current. Rounds of three `init-db`, then two servers."""
    def fresh(i: int) -> dict[str, Any]:
        if backend == "sqlite":
            return {"path": str(tmp_path / f"round{i}.db")}
        return {"url": request.getfixturevalue("postgres_cluster").create_database()}

    head = _head()
    for i in range(6):
        database = fresh(i)
        nodes = Nodes(tmp_path, spawn, database)
        procs = [nodes.launch(f"init{j}", "init-db") for j in range(3)]
        codes = [proc.wait(120) for proc in procs]
        assert codes == [0, 0, 0], f"round {i}: " + "\n".join(p.stderr for p in procs)
        assert _schema_version(database) == [head]
    database = fresh(6)
    nodes = Nodes(tmp_path, spawn, database)
    both = [(nodes.launch(name), name) for name in ("node-a", "node-b")]
    for proc, name in both:
        nodes.started(proc, name)      # both listen
    for proc, name in both:
        assert "Traceback" not in proc.stderr
        assert proc.stop() == 0, f"{name}: {proc.stderr}"
    assert _schema_version(database) == [head]


def _query(database: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` (no parameters) on the shared index, SQLite or PostgreSQL."""
    if "url" in database:
        return [tuple(r) for r in asyncio.run(pg_fetch(database["url"], sql))]
    with sqlite3.connect(database["path"]) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_final_n_sets_of_one_step_on_two_nodes_have_one_winner(
        tmp_path: Path, spawn: Callable[..., ServerProcess], request: pytest.FixtureRequest,
        scu: Scu, backend: str) -> None:
    """N-CREATE on A, then COMPLETED sent to A and DISCONTINUED to B at the same moment:
    one N-SET succeeds, the other is refused as PS3.4 F.7.2.2.3 says for a step no
    longer IN PROGRESS (0x0110 Processing Failure, Error ID A710's comment); the stored
    step and its worklist item carry the winner's status."""
    database = ({"path": str(tmp_path / "pacs.db")} if backend == "sqlite"
                else {"url": request.getfixturevalue("postgres_url")})
    nodes = Nodes(tmp_path, spawn, database)
    a = nodes.start("node-a")
    b = nodes.start("node-b")
    rounds = 8
    items = tmp_path / "items.json"
    items.write_text(json.dumps([item(n) for n in range(1, rounds + 1)]), encoding="utf-8")
    added = subprocess.run([sys.executable, "-m", "pacs_server", "--config",
                            str(nodes.config("node-a")), "worklist", "add", str(items)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    modalities = [Modality(a.port, scu), Modality(b.port, scu)]
    finals = ("COMPLETED", "DISCONTINUED")
    winners = {}
    for n in range(1, rounds + 1):
        step = Dataset()
        step.StudyInstanceUID, step.AccessionNumber = f"1.2.9.{n}", f"A{n:04d}"
        step.ScheduledProcedureStepID = f"S{n:04d}"
        uid = generate_uid()
        created, _ = asyncio.run(modalities[n % 2].create(
            create_attributes(ScheduledStepAttributesSequence=Sequence([step])), uid))
        assert created.Status == SUCCESS
        answers = race_n_sets(scu, [a.port, b.port], uid, finals)
        said = [(hex(r.Status), r.get("ErrorComment")) for r in answers]
        assert sorted(r.Status for r in answers) == [SUCCESS, 0x0110], f"round {n}: {said}"
        loser = next(r for r in answers if r.Status != SUCCESS)
        assert loser.ErrorComment == "Performed Procedure Step Object may no longer be updated"
        winners[uid] = finals[next(i for i, r in enumerate(answers) if r.Status == SUCCESS)]
        winners[f"A{n:04d}"] = winners[uid]
    steps = dict(_query(database, "SELECT sop_instance_uid, status FROM mpps"))
    assert steps == {uid: final for uid, final in winners.items() if not uid.startswith("A")}
    wait_until(lambda: dict(_query(database, "SELECT accession_number, sps_status "
                                             "FROM worklist_items"))
               == {acc: final for acc, final in winners.items() if acc.startswith("A")},
               10, "every worklist item follows its step's winner")
    for proc in (a, b):
        assert proc.stop() == 0


# ----------------------------------------------------------------------- PostgreSQL
@pytest.mark.parametrize("policy, rounds", [("reject", 30), ("ignore", 10)])
def test_the_same_instance_sent_to_both_nodes_at_once(
        pg_nodes: Nodes, postgres_url: str, dicom_files: DicomFiles, scu: Scu,
        policy: str, rounds: int) -> None:
    """The race the per-process claim lost: one file, one row, and the answers the
    policy gives (reject: one Success, one duplicate; ignore: two Successes)."""
    a = pg_nodes.start("node-a", storage={"duplicate_policy": policy})
    b = pg_nodes.start("node-b", storage={"duplicate_policy": policy})
    sent = []
    for i in range(rounds):
        # Half the rounds in a study of their own (both nodes create it at once),
        # half in one shared study (its attribute sets extended by both).
        path = dicom_files.generated(PatientID=f"RACE{i % 3}",
                                     **({"StudyInstanceUID": "1.2.826.0.1.3680043.2.1143.77"}
                                        if i % 2 else {}))
        race_once(scu, [a.port, b.port], path, policy, i)
        sent.append(path)

    rows = one_file_per_row(pg_nodes, postgres_url, sent)
    for r in rows:
        assert (pg_nodes.archive / r["path"]).stat().st_size > 0
    no_leftovers(pg_nodes.archive)
    # Both nodes agree, and a later copy is a duplicate everywhere, also sent to both
    # at once (both find the file's name taken and each other's intent open).
    (again,) = scu.store(b.port, [sent[0]])
    assert again.status == (DUPLICATE if policy == "reject" else SUCCESS)
    answer = DUPLICATE if policy == "reject" else SUCCESS
    assert race(scu, [a.port, b.port], sent[1]) == [answer, answer]
    for proc in (a, b):
        assert "storage.orphan_set_aside" not in proc.stderr
        assert proc.stop() == 0


@pytest.mark.parametrize("policy", ["reject", "ignore"])
def test_an_orphan_sent_to_both_nodes_at_once_is_stored_once(
        pg_nodes: Nodes, postgres_url: str, dicom_files: DicomFiles, scu: Scu,
        policy: str) -> None:
    """Each round leaves an orphan (the instance's file, its row gone, older than any
    store in flight), then sends the instance to A and B at the same moment: one sets
    the orphan aside and stores it, the other gets the policy's duplicate answer (both
    answered 0xA700 when each waited for the other's intent)."""
    a = pg_nodes.start("node-a", storage={"duplicate_policy": policy})
    b = pg_nodes.start("node-b", storage={"duplicate_policy": policy})
    rounds, sent = 12, []
    old = time.time() - 3600
    for i in range(rounds):
        path = dicom_files.generated(PatientID=f"ORPHAN{i % 2}")
        assert scu.store((a, b)[i % 2].port, [path])[0].ok
        (row,) = asyncio.run(pg_fetch(
            postgres_url, "DELETE FROM instances WHERE sop_instance_uid = $1 RETURNING path",
            sop_uid(path)))
        os.utime(pg_nodes.archive / row["path"], (old, old))
        race_once(scu, [a.port, b.port], path, policy, i)
        sent.append(path)

    one_file_per_row(pg_nodes, postgres_url, sent)
    aside = [p for p in (pg_nodes.archive / ".quarantine").rglob("*") if p.is_file()]
    assert len(aside) == rounds                            # each orphan set aside once
    assert incoming_files(pg_nodes.archive) == [] and open_intents(pg_nodes.archive) == []
    assert list((pg_nodes.archive / ".claims").iterdir()) == []
    for proc in (a, b):
        assert proc.stop() == 0
    assert sum(proc.stderr.count("storage.orphan_set_aside") for proc in (a, b)) == rounds


@pytest.mark.parametrize("policy_a", ["replace", "reject", "ignore"])
def test_two_versions_of_one_instance_replaced_on_both_nodes_at_once(
        pg_nodes: Nodes, postgres_url: str, dicom_files: DicomFiles, scu: Scu,
        policy_a: str) -> None:
    """duplicate_policy: replace on B (and on A, or a mixed deployment: A rejects or
    ignores). Each round sends two versions of one SOP instance (of different sizes),
    one to A and one to B, at the same moment: a new instance (one path), a re-send of
    a stored one (its file exists), and a corrected Patient ID and study (two paths).
    B answers Success, A Success or its policy's duplicate answer; one row remains per
    instance, naming a file that holds what the row says (its size), and no other file."""
    a = pg_nodes.start("node-a", storage={"duplicate_policy": policy_a})
    b = pg_nodes.start("node-b", storage={"duplicate_policy": "replace"})
    rounds = 9
    for i in range(rounds):
        same = {"SOPInstanceUID": generate_uid(), "StudyInstanceUID": generate_uid(),
                "SeriesInstanceUID": generate_uid(), "PatientID": "REPL"}
        if i % 3 == 1:
            assert scu.store(a.port, [dicom_files.generated(**same)])[0].ok
        moved = ({"PatientID": "REPL-2", "StudyInstanceUID": generate_uid(),
                  "SeriesInstanceUID": generate_uid()} if i % 3 == 2 else {})
        versions = [dicom_files.generated(pixel_bytes=64, **same),
                    dicom_files.generated(pixel_bytes=96, **{**same, **moved})]
        statuses = race(scu, [a.port, b.port], *versions)
        a_may = {SUCCESS, DUPLICATE} if policy_a == "reject" else {SUCCESS}
        assert statuses[0] in a_may and statuses[1] == SUCCESS, f"round {i}: {statuses}"

    rows = asyncio.run(pg_fetch(postgres_url, "SELECT path, size FROM instances"))
    assert len(rows) == rounds
    files = {str(p.relative_to(pg_nodes.archive)): p.stat().st_size
             for p in archived_files(pg_nodes.archive)}
    assert files == {r["path"]: r["size"] for r in rows}
    no_leftovers(pg_nodes.archive)
    assert list((pg_nodes.archive / ".claims").iterdir()) == []
    for proc in (a, b):
        assert proc.stop() == 0


def test_stored_on_one_node_found_and_retrieved_on_the_other_at_once(
        pg_nodes: Nodes, dicom_files: DicomFiles, scu: Scu, tmp_path: Path) -> None:
    a = pg_nodes.start("node-a")
    b = pg_nodes.start("node-b")
    for i in range(5):
        path = dicom_files.fresh("CT_small.dcm")
        assert scu.store(a.port, [path])[0].ok
        study = identifier("STUDY", StudyInstanceUID="")
        found = scu.find(b.port, identifier("IMAGE", SOPInstanceUID=sop_uid(path),
                                            StudyInstanceUID="", SeriesInstanceUID=""))
        matches = [r.identifier for r in found if r.status in (0xFF00, 0xFF01)]
        assert len(matches) == 1, f"round {i}: {found}"
        study = identifier("STUDY", StudyInstanceUID=str(matches[0].StudyInstanceUID))
        getter = GetScu(CT_IMAGE)
        responses = getter.get(b.port, study)
        assert responses[-1].status == SUCCESS
        assert list(getter.received) == [sop_uid(path)]
    for proc in (a, b):
        assert proc.stop() == 0


def test_worklist_and_admin_entries_reach_the_other_node(
        pg_nodes: Nodes, tmp_path: Path, scu: Scu) -> None:
    """An item added through A's command is offered by B; an AE title added through A's
    admin API is admitted by B within the refresh bound (control.ADMIN_REFRESH_S)."""
    shared = {"admin": {"token": TOKEN},
              "monitoring": {"metrics_port": 0, "host": "127.0.0.1"},
              "access_control": {"allowed_ae_titles": [scu.ae_title]}}
    a = pg_nodes.start("node-a", **shared)
    b = pg_nodes.start("node-b", **shared)

    items = tmp_path / "items.json"
    items.write_text(json.dumps([item(1)]), encoding="utf-8")
    added = subprocess.run([sys.executable, "-m", "pacs_server",
                            "--config", str(pg_nodes.config("node-a", **shared)),
                            "worklist", "add", str(items)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    found, final = mwl_find(scu, b.port, query())
    assert accessions(found) == ["A0001"] and final.Status == SUCCESS

    newcomer = Scu("NEWCOMER")
    assert not _admitted(newcomer, b.port)
    base = f"http://127.0.0.1:{a.http_port}"   # type: ignore[attr-defined]
    status, _ = asyncio.run(http_call(base, "POST", "/api/ae", body={"ae_title": "NEWCOMER"}))
    assert status == 200
    added_at = time.monotonic()
    wait_until(lambda: _admitted(newcomer, b.port), 10, "B admits the API's new AE title")
    assert time.monotonic() - added_at <= ADMIN_REFRESH_S + 3.0   # the bound, and an association
    status, _ = asyncio.run(http_call(base, "DELETE", "/api/ae", body={"ae_title": "NEWCOMER"}))
    assert status == 200
    wait_until(lambda: not _admitted(newcomer, b.port), 10, "B drops the removed AE title")
    for proc in (a, b):
        assert proc.stop() == 0


def _admitted(scu: Scu, port: int | None) -> bool:
    with scu.associate(port, require=False) as assoc:
        return bool(assoc.is_established)


def test_singleton_jobs_run_once(pg_nodes: Nodes, postgres_url: str) -> None:
    """Worklist retention runs at start: in the first node only, the second finds the
    lease held (the leases table counts the runs it granted)."""
    a = pg_nodes.start("node-a")
    a.wait_for_event("worklist.retention")
    b = pg_nodes.start("node-b")
    time.sleep(2.0)
    assert "worklist.retention" not in b.stderr
    rows = asyncio.run(pg_fetch(postgres_url,
                                "SELECT name, owner, runs FROM leases ORDER BY name"))
    by_name = {r["name"]: (r["owner"], r["runs"]) for r in rows}
    assert by_name["worklist-retention"] == ("node-a", 1)
    # A clean stop hands the leases over at once: a new node takes them at its start.
    assert a.stop() == 0
    c = pg_nodes.start("node-c")
    c.wait_for_event("worklist.retention", timeout=10)
    rows = asyncio.run(pg_fetch(postgres_url,
                                "SELECT owner, runs FROM leases WHERE name = $1",
                                "worklist-retention"))
    assert [(r["owner"], r["runs"]) for r in rows] == [("node-c", 2)]
    for proc in (b, c):
        assert proc.stop() == 0


def test_a_starting_node_leaves_a_siblings_transfer_alone(
        pg_nodes: Nodes, dicom_files: DicomFiles, scu: Scu) -> None:
    """Node B starts while a slow C-STORE streams into node A's receive directory: the
    transfer completes and is stored. A receive file of a node gone long ago goes (its
    empty directory stays: an idle node may be alive)."""
    a = pg_nodes.start("node-a")
    gone = pg_nodes.archive / ".incoming" / "node-gone"
    gone.mkdir(parents=True)
    (gone / "tmpabc.dcm").write_bytes(b"half a transfer")
    old = time.time() - 3600
    os.utime(gone / "tmpabc.dcm", (old, old))
    os.utime(gone, (old, old))

    big = dicom_files.big(3_000_000)
    result: list[int] = []
    b_listens = threading.Event()

    def slow_store() -> None:
        with scu.associate(a.port, contexts_for([big])) as assoc:
            # A third of the instance, then the rest once B listens (however long
            # B's start takes on a loaded machine).
            throttle(assoc, 400_000, hold=(b_listens, 1_000_000))
            result.append(send(assoc, big).status)

    sender = threading.Thread(target=slow_store)
    sender.start()
    own = pg_nodes.archive / ".incoming" / "node-a"
    wait_until(lambda: any(own.iterdir()), 10, "A receiving")
    try:
        b = pg_nodes.start("node-b")
        assert any(own.iterdir()), "B's start emptied A's receive directory"
    finally:
        b_listens.set()
    sender.join(60)
    assert result == [SUCCESS]
    assert list(gone.iterdir()) == []
    found = scu.find(b.port, identifier("IMAGE", SOPInstanceUID=sop_uid(big),
                                        StudyInstanceUID="", SeriesInstanceUID=""))
    assert sum(r.status in (0xFF00, 0xFF01) for r in found) == 1
    for proc in (a, b):
        assert proc.stop() == 0


# --------------------------------------------------------------------------- SQLite
def test_two_processes_on_one_sqlite_file(tmp_path: Path, spawn: Callable[..., ServerProcess],
                                          dicom_files: DicomFiles, dcmtk: Dcmtk) -> None:
    """Concurrent storescu to both processes: every instance stored and indexed once, and
    no "database is locked" reaches a sender (the writers retry, bounded)."""
    nodes = Nodes(tmp_path, spawn, {"path": str(tmp_path / "pacs.db")},
                  storage={"fsync": False})
    a = nodes.start("node-a")
    b = nodes.start("node-b")
    senders, per_sender = 6, 15
    dirs, uids = [], set()
    for i in range(senders):
        d = tmp_path / f"sender{i}"
        for _ in range(per_sender):
            # Three patients and their studies, created by whichever process comes first.
            uids.add(sop_uid(dicom_files.generated(directory=d, PatientID=f"SQ{i % 3}")))
        dirs.append(d)
    procs = [subprocess.Popen(
        [dcmtk.tool("storescu"), "-aet", f"SEND{i}", "-aec", "PACS", "+sd", "127.0.0.1",
         str((a, b)[i % 2].port), str(d)], env=dcmtk.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, d in enumerate(dirs)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * senders, "\n".join(outputs)
    assert not any("Store Failed" in out or "Error" in out for out in outputs), outputs
    rows = index_rows(tmp_path / "pacs.db")
    assert set(rows) == uids
    assert sorted(nodes.archive / r for r in rows.values()) == archived_files(nodes.archive)
    no_leftovers(nodes.archive)
    for proc in (a, b):
        assert "index.write_failed" not in proc.stderr
        assert proc.stop() == 0


def test_a_second_process_with_the_same_identity_is_refused(
        tmp_path: Path, spawn: Callable[..., ServerProcess]) -> None:
    """Two live processes must never share a receive directory: the second is refused at
    start, naming the key, and the first keeps running; once it stops, the name is free."""
    nodes = Nodes(tmp_path, spawn, {"path": str(tmp_path / "pacs.db")})
    a = nodes.start("node-a")
    path = nodes.config("node-a")
    twin = spawn([sys.executable, "-m", "pacs_server", "--config", str(path)], tmp_path)
    assert twin.wait(60) != 0
    assert "server.node_name: 'node-a' is in use by another running process" in twin.stderr
    assert "Traceback" not in twin.stderr
    wait_until_responds(a.port, 10)
    assert a.stop() == 0
    assert nodes.start("node-a").stop() == 0
