"""A socket-level fuzz harness for the DICOM upper layer, against a real server process.

Cases are random and mutated PDUs derived from real pynetdicom encodings: an
A-ASSOCIATE-RQ (pynetdicom's `pdu.A_ASSOCIATE_RQ`) and a P-DATA-TF carrying a C-ECHO-RQ
command set. Mutations: wrong PDU types, PDU lengths off by one, 0 and 2^32-1, truncated
headers and bodies, bit flips, garbage after a valid A-ASSOCIATE-RQ, presentation context
and sub-item lengths wrong, odd/even/zero context IDs, malformed command sets (lengths,
group length, missing Command Field, unknown context), release/abort PDUs of the wrong
size, and pure random bytes.

After every case: the server process is alive, answers C-ECHO (a raw association of
our own), and its thread count is back to its baseline within `settle_s` seconds (not
after a timeout). A case that breaks one of these is a finding, kept with its bytes.

    PYTHONPATH=tests python -m support.fuzz_pdus --cases 20000 --seed 7   # scripts/fuzz-sockets

The bounded CI run is tests/integration/test_fuzz_sockets.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.config import SERVER_AE
from support.security import associate_rq, associated, echo_rq_pdata, read_pdu

RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


@dataclass
class Case:
    name: str
    data: bytes
    after_association: bool = False   # sent once a valid association is established


@dataclass
class Finding:
    case: str
    problem: str
    data_hex: str


@dataclass
class Report:
    cases: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- mutations

def _set_length(pdu: bytes, length: int) -> bytes:
    return pdu[:2] + (length & 0xFFFFFFFF).to_bytes(4, "big") + pdu[6:]


def _flip(data: bytes, rng: random.Random, n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _item_offsets(rq: bytes, item_type: int) -> list[int]:
    """Offsets of variable items of `item_type` in an A-ASSOCIATE-RQ (walks the items)."""
    out, at = [], 74
    while at + 4 <= len(rq):
        kind, length = rq[at], int.from_bytes(rq[at + 2:at + 4], "big")
        if kind == item_type:
            out.append(at)
        if kind in (0x20, 0x50):   # walk into presentation context and user info items
            inner = at + 4 + (4 if kind == 0x20 else 0)
            end = at + 4 + length
            while inner + 4 <= end:
                sub, sub_len = rq[inner], int.from_bytes(rq[inner + 2:inner + 4], "big")
                if sub == item_type:
                    out.append(inner)
                inner += 4 + sub_len
        at += 4 + length
    return out


def _item_length(rq: bytes, at: int, length: int) -> bytes:
    return rq[:at + 2] + (length & 0xFFFF).to_bytes(2, "big") + rq[at + 4:]


def rq_mutations(rng: random.Random) -> Iterator[Case]:
    rq = associate_rq()
    n = len(rq) - 6
    yield Case("rq length 0", _set_length(rq, 0))
    yield Case("rq length -1", _set_length(rq, n - 1))
    yield Case("rq length +1", _set_length(rq, n + 1))
    yield Case("rq length 2^32-1", _set_length(rq, 2**32 - 1))
    yield Case("rq length random", _set_length(rq, rng.randrange(2**32)))
    yield Case("rq truncated", rq[:rng.randrange(1, len(rq))])
    yield Case("rq header truncated", rq[:rng.randrange(1, 6)])
    yield Case("rq + garbage", rq + rng.randbytes(rng.randrange(1, 200)))
    yield Case("rq + second rq", rq + rq)
    yield Case("rq wrong type", bytes([rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 0x20, 0xFF])])
               + rq[1:])
    yield Case("rq bit flips", _flip(rq, rng, rng.randrange(1, 5)))
    yield Case("rq context id", associate_rq(context_id=rng.choice([0, 2, 254, 255, 128])))
    yield Case("rq protocol version", rq[:6] + rng.randbytes(2) + rq[8:])
    yield Case("rq called ae", rq[:10] + rng.randbytes(16) + rq[26:])
    for item_type, name in ((0x10, "application context"), (0x20, "presentation context"),
                            (0x30, "abstract syntax"), (0x40, "transfer syntax"),
                            (0x50, "user info"), (0x51, "max length")):
        offsets = _item_offsets(rq, item_type)
        if not offsets:
            continue
        at = rng.choice(offsets)
        current = int.from_bytes(rq[at + 2:at + 4], "big")
        new = rng.choice([0, current - 1, current + 1, 0xFFFF, rng.randrange(0x10000)])
        yield Case(f"{name} item length", _item_length(rq, at, new))


def _pdata_with_pdv_length(pdata: bytes, length: int) -> bytes:
    return pdata[:6] + (length & 0xFFFFFFFF).to_bytes(4, "big") + pdata[10:]


def pdata_mutations(rng: random.Random) -> Iterator[Case]:
    pd = echo_rq_pdata()
    pdv = int.from_bytes(pd[6:10], "big")
    yield Case("pdata pdu length +1", _set_length(pd, len(pd) - 5), True)
    yield Case("pdata pdu length -1", _set_length(pd, len(pd) - 7), True)
    yield Case("pdata pdu length 2^32-1", _set_length(pd, 2**32 - 1), True)
    yield Case("pdata pdv length", _pdata_with_pdv_length(
        pd, rng.choice([0, 1, pdv - 1, pdv + 1, 0xFFFFFFFF])), True)
    yield Case("pdata context id", pd[:10] + bytes([rng.choice([0, 2, 3, 255])]) + pd[11:],
               True)
    yield Case("pdata control header", pd[:11] + bytes([rng.randrange(256)]) + pd[12:], True)
    yield Case("pdata truncated", pd[:rng.randrange(1, len(pd))], True)
    yield Case("pdata bit flips", _flip(pd, rng, rng.randrange(1, 6)), True)
    body = bytearray(pd)
    # Command set elements start at offset 12: mutate one element's length or tag.
    offsets = []
    at = 12
    while at + 8 <= len(body):
        offsets.append(at)
        at += 8 + int.from_bytes(body[at + 4:at + 8], "little")
    el = rng.choice(offsets)
    length = int.from_bytes(body[el + 4:el + 8], "little")
    mutated = bytearray(body)
    mutated[el + 4:el + 8] = rng.choice([0, length + 1, max(0, length - 1), 0xFFFFFFFF,
                                         rng.randrange(2**32)]).to_bytes(4, "little")
    yield Case("command element length", bytes(mutated), True)
    mutated = bytearray(body)
    mutated[el + 2:el + 4] = rng.randbytes(2)
    yield Case("command element tag", bytes(mutated), True)
    yield Case("command random body", pd[:12] + rng.randbytes(pdv - 2), True)
    yield Case("data pdv instead of command", pd[:11] + bytes([pd[11] & ~0x01]) + pd[12:],
               True)
    yield Case("release rq wrong length", _set_length(RELEASE_RQ, rng.choice([0, 3, 5, 1000])),
               True)
    yield Case("abort rq wrong length", _set_length(bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 0]),
                                                    rng.choice([0, 2, 6, 2**32 - 1])), True)
    yield Case("second rq in association", associate_rq(), True)
    yield Case("unknown pdu type", bytes([rng.randrange(8, 256), 0, 0, 0, 0, 2, 0, 0]), True)


def random_bytes(rng: random.Random) -> Iterator[Case]:
    yield Case("random", rng.randbytes(rng.randrange(0, 400)))
    yield Case("random after association", rng.randbytes(rng.randrange(1, 400)), True)


GENERATORS: list[Callable[[random.Random], Iterator[Case]]] = [
    rq_mutations, pdata_mutations, random_bytes]


def cases(count: int, seed: int) -> Iterator[Case]:
    rng = random.Random(seed)
    produced = 0
    while produced < count:
        for gen in GENERATORS:
            for case in gen(rng):
                if produced >= count:
                    return
                produced += 1
                yield case


# --------------------------------------------------------------------------- running

def raw_echo(port: int, timeout: float = 3.0) -> bool:
    """A whole association over a raw socket: RQ/AC, C-ECHO-RQ/RSP (status 0), release."""
    try:
        sock = associated(port, timeout=timeout)
    except (OSError, ConnectionError):
        return False
    try:
        sock.sendall(echo_rq_pdata())
        reply = read_pdu(sock, timeout)
        ok = len(reply) > 12 and reply[0] == 0x04 and reply[11] & 0x03 == 0x03
        sock.sendall(RELEASE_RQ)
        read_pdu(sock, timeout)
        return ok
    except OSError:
        return False
    finally:
        sock.close()


def send_case(port: int, case: Case, timeout: float) -> str:
    """Send the case, half-close, and read until the server closes; '' when it did."""
    try:
        sock = associated(port, timeout=timeout) if case.after_association else \
            socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except (OSError, ConnectionError) as exc:
        return f"could not set up the case: {exc}"
    try:
        try:
            sock.sendall(case.data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return ""   # the server closed first: fine
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                return ""
            if not chunk:
                return ""
        return f"connection still open after {timeout} s"
    finally:
        sock.close()


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def run_campaign(port: int, pid: int, count: int, seed: int, settle_s: float = 2.0,
                 case_timeout: float = 3.0, alive: Callable[[], bool] = lambda: True,
                 progress: Callable[[int], None] | None = None) -> Report:
    """Run `count` cases against the server (`pid` listening on `port`)."""
    started = time.monotonic()
    report = Report()
    assert raw_echo(port), "server does not answer C-ECHO before the campaign"
    time.sleep(0.2)
    baseline = thread_count(pid)
    for case in cases(count, seed):
        report.cases += 1
        kind = case.name
        report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
        problems = []
        outcome = send_case(port, case, case_timeout)
        if outcome:
            problems.append(outcome)
        if not alive():
            problems.append("server process died")
            report.findings.append(Finding(case.name, "; ".join(problems), case.data.hex()))
            break
        if not raw_echo(port):
            problems.append("no C-ECHO answer after the case")
        deadline = time.monotonic() + settle_s
        threads = thread_count(pid)
        while threads > baseline and time.monotonic() < deadline:
            time.sleep(0.01)
            threads = thread_count(pid)
        if threads > baseline:
            problems.append(f"{threads - baseline} thread(s) left after {settle_s} s")
        if problems:
            report.findings.append(Finding(case.name, "; ".join(problems), case.data.hex()))
        if progress is not None and report.cases % 500 == 0:
            progress(report.cases)
    report.seconds = round(time.monotonic() - started, 1)
    return report


# --------------------------------------------------------------------------- server

class ServerProcess:
    """`python -m pacs_server` on an ephemeral port in a temporary directory."""

    def __init__(self, root: Path, extra: dict[str, object] | None = None) -> None:
        import yaml

        cfg = {"server": {"host": "127.0.0.1", "port": 0, "ae_title": SERVER_AE,
                          "negotiation_timeout": 2.0},
               "storage": {"directory": str(root / "archive")},
               "database": {"path": str(root / "pacs.db")},
               "logging": {"file": "", "json_console": True, "level": "warning"},
               "monitoring": {"metrics_port": 0}}
        for key, value in (extra or {}).items():
            section, name = key.split(".", 1)
            cfg.setdefault(section, {})[name] = value   # type: ignore[index]
        path = root / "fuzz.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = open(root / "server.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacs_server", "-c", str(path), "--log-level", "info"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        self.port, self.metrics_port = self._wait_port(root / "server.log")

    def _wait_port(self, log: Path, timeout: float = 30.0) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if '"server.started"' in line:
                    started = json.loads(line)
                    return int(started["port"]), int(started["metrics_port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text(errors='replace')}")
            time.sleep(0.1)
        raise TimeoutError("server did not start")

    def gauge(self, name: str = "pacs_association_active") -> float:
        """A value from the server's /metrics (association bookkeeping)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as rsp:
            for line in rsp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def uncaught(self) -> int:
        """Exceptions that escaped a thread (not the ones pynetdicom logs and handles)."""
        return self.output().count("Exception in thread")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@dataclass
class Outcome:
    report: Report
    active: float    # associations still counted active at the end (must be 0)
    uncaught: int    # exceptions that escaped a server thread (must be 0)

    @property
    def clean(self) -> bool:
        return not self.report.findings and not self.active and not self.uncaught


def fuzz_fresh_server(root: Path, count: int, seed: int,
                      progress: Callable[[int], None] | None = None) -> Outcome:
    """Start a server in `root`, run the campaign, read its final state, stop it."""
    server = ServerProcess(root)
    try:
        report = run_campaign(server.port, server.proc.pid, count, seed,
                              alive=server.alive, progress=progress)
        time.sleep(0.5)
        return Outcome(report, server.gauge(), server.uncaught())
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="socket-level fuzzing of pacs_server")
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pacs-fuzz-") as tmp:
        out = fuzz_fresh_server(Path(tmp), args.cases, args.seed,
                                progress=lambda n: print(f"{n} cases", flush=True))
    report = out.report
    print(f"seed {args.seed}: {report.cases} cases in {report.seconds} s, "
          f"{len(report.findings)} findings, {out.uncaught} uncaught thread exceptions, "
          f"{out.active:g} associations still counted active")
    for f in report.findings[:20]:
        print(f"  {f.case}: {f.problem}  [{f.data_hex[:80]}]")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "cases": report.cases,
                                         "seconds": report.seconds,
                                         "uncaught": out.uncaught, "active": out.active,
                                         "findings": [vars(f) for f in report.findings]},
                                        indent=1))
    return 0 if out.clean else 1


if __name__ == "__main__":
    sys.exit(main())
