"""dcmtk clients, timed as whole processes (what a user of the archive waits for).

Each call returns a `Timed` with the wall time, exit code and a short error text; every
subprocess has a timeout, and a timed-out one is killed by its PID.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from servers import CALLING_AE, ENV, HOST


class BenchError(Exception):
    """A measurement that could not be taken; its text goes into the table."""


@dataclass
class Timed:
    seconds: float
    returncode: int
    stderr: str
    stdout: str = ""

    def error(self) -> str:
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.startswith(("E:", "F:"))]
        text = lines[0] if lines else (self.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {self.returncode}: {text[:160]}"


def run(cmd: list[str], timeout: float) -> Timed:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise BenchError(f"{cmd[0]} timed out after {timeout:.0f} s") from None
    return Timed(time.perf_counter() - started, proc.returncode,
                 err.decode(errors="replace"), out.decode(errors="replace"))


def storescu(port: int, ae: str, paths: list[Path]) -> list[str]:
    """The storescu command for files or directories (scanned recursively for *.dcm)."""
    return ["storescu", "-aet", CALLING_AE, "-aec", ae, "+sd", "+r", "+sp", "*.dcm",
            HOST, str(port), *map(str, paths)]


def store(port: int, ae: str, paths: list[Path], timeout: float = 1800) -> Timed:
    return run(storescu(port, ae, paths), timeout)


def store_parallel(port: int, ae: str, dirs: Sequence[Path | list[Path]],
                   timeout: float = 1800) -> Timed:
    """One storescu per item (a directory or a list of them), all at once.

    Returns the wall time until the last one ends.
    """
    started = time.perf_counter()
    procs = [subprocess.Popen(storescu(port, ae, d if isinstance(d, list) else [d]), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for d in dirs]
    errors: list[str] = []
    rc = 0
    deadline = started + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
                    q.communicate(timeout=10)
            raise BenchError(f"storescu x{len(dirs)} timed out after {timeout:.0f} s") from None
        if p.returncode:
            rc = p.returncode
            errors.append(err.decode(errors="replace"))
    return Timed(time.perf_counter() - started, rc, "\n".join(errors))


def echo(port: int, ae: str, timeout: float = 30) -> Timed:
    return run(["echoscu", "-aet", CALLING_AE, "-aec", ae, HOST, str(port)], timeout)


_PENDING = re.compile(r"Find Response: \d+ \(Pending\)")


def find(port: int, ae: str, keys: list[str], timeout: float = 120) -> tuple[Timed, int]:
    """findscu (Study Root); returns the timing and the number of matches."""
    cmd = ["findscu", "-v", "-S", "-aet", CALLING_AE, "-aec", ae]
    for k in keys:
        cmd += ["-k", k]
    t = run(cmd + [HOST, str(port)], timeout)
    return t, len(_PENDING.findall(t.stderr))


def get(port: int, ae: str, study_uid: str, out: Path, timeout: float = 600) -> Timed:
    out.mkdir(parents=True, exist_ok=True)
    return run(["getscu", "-S", "-aet", CALLING_AE, "-aec", ae,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                "-od", str(out), HOST, str(port)], timeout)


def move(port: int, ae: str, dest_ae: str, study_uid: str, timeout: float = 600) -> Timed:
    return run(["movescu", "-S", "-aet", CALLING_AE, "-aec", ae, "-aem", dest_ae,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                HOST, str(port)], timeout)
