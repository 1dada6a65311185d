"""dcmtk: finding the real tools, skipping (or failing, in CI) without them, and running
findscu / movescu / getscu / storescp against a server.

pynetdicom installs console scripts named like dcmtk's (echoscu, findscu, getscu, movescu,
storescp, storescu) into the virtualenv, so the first `name` on PATH is not necessarily
dcmtk's: `dcmtk_path` asks each candidate for its version.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from support.config import SERVER_AE
from support.polling import free_port, port_open, wait_until
from support.scu import SCU_AE

# What the `dcmtk` fixture and a bare `dcmtk` marker check for.
BASIC_TOOLS = ("echoscu", "storescu", "dcmdump")
QR_TOOLS = ("findscu", "movescu", "getscu", "storescp", "storescu", "dcmdump")


@functools.cache
def _dcmtk_path(name: str, path_env: str) -> str | None:
    for directory in path_env.split(os.pathsep):
        candidate = Path(directory or ".") / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(candidate), "--version"], capture_output=True,
                                 text=True, errors="replace", timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return str(candidate)
    return None


def dcmtk_path(name: str) -> str | None:
    """The dcmtk program `name` on PATH, or None."""
    return _dcmtk_path(name, os.environ.get("PATH", ""))


def put_dcmtk_first_on_path() -> None:
    """With an activated venv pynetdicom's scripts would shadow dcmtk for tests that call
    tools by name: put the directory of the real dcmtk first on PATH."""
    echoscu = dcmtk_path("echoscu")
    if echoscu is not None:
        os.environ["PATH"] = str(Path(echoscu).parent) + os.pathsep + os.environ["PATH"]


def require_dcmtk(tools: Sequence[str] = BASIC_TOOLS) -> None:
    """Skip (naming the missing tools) unless PACS_REQUIRE_DCMTK=1, then fail."""
    missing = [tool for tool in tools if dcmtk_path(tool) is None]
    if not missing:
        return
    message = f"dcmtk tools not found on PATH: {', '.join(missing)}"
    if os.environ.get("PACS_REQUIRE_DCMTK") == "1":
        pytest.fail(f"{message} (PACS_REQUIRE_DCMTK=1)", pytrace=False)
    pytest.skip(f"{message}; install dcmtk or set PACS_REQUIRE_DCMTK=1 to make this fail")


def tool(name: str) -> str:
    """The path of dcmtk's `name` (skips or fails the test when it is missing)."""
    path = dcmtk_path(name)
    if path is None:
        require_dcmtk((name,))
        raise AssertionError(f"dcmtk {name} not found")
    return path


def dcmtk_env() -> dict[str, str]:
    # Debian's dcmtk keeps Nagle on unless told otherwise: ~40 ms stall per DIMSE message.
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Dcmtk:
    """The dcmtk tools and the environment to run them in (the `dcmtk` fixture)."""

    env: dict[str, str] = field(default_factory=dcmtk_env)

    def tool(self, name: str) -> str:
        return tool(name)


# --------------------------------------------------------------------------- Q/R runs

_DIMSE_BLOCK = re.compile(r"=+ INCOMING DIMSE MESSAGE =+(.*?)=+ END DIMSE MESSAGE =+", re.S)
_RSP_TYPE = re.compile(r"Message Type\s*:\s*C-(FIND|MOVE|GET) RSP")
_DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_FAILED_LIST = re.compile(r"\(0008,0058\) UI \[([^\]]*)\]")


@dataclass
class ToolResult:
    """What a dcmtk SCU did: return code, DIMSE statuses seen (in order), output."""

    returncode: int
    statuses: list[int]
    stdout: str
    stderr: str
    responses: list[Dataset] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def final_status(self) -> int:
        assert self.statuses, f"no DIMSE status in the output:\n{self.stderr[-3000:]}"
        return self.statuses[-1]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def failed_uids(self) -> list[str]:
        """Failed SOP Instance UID List of the last response that carried one (`-d`)."""
        found = _FAILED_LIST.findall(self.output)
        return [u for u in found[-1].split("\\") if u] if found else []

    def counts(self) -> dict[str, int]:
        """Sub-operation counts of the final response (movescu/getscu `-d`)."""
        out = {}
        for name in ("Remaining", "Completed", "Failed", "Warning"):
            values = re.findall(rf"{name} Suboperations\s*:\s*(\d+)", self.output)
            if values:
                out[name.lower()] = int(values[-1])
        return out


def _run(cmd: list[str], timeout: float = 60.0) -> ToolResult:
    started = time.monotonic()
    proc = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True,
                          errors="replace", timeout=timeout)
    text = proc.stdout + proc.stderr
    # `-d` prints every DIMSE message; keep the statuses of incoming Q/R responses (a
    # getscu also prints the C-STORE responses it sends, which are not ours to check).
    statuses = []
    for block in _DIMSE_BLOCK.finditer(text):
        body = block.group(1)
        status = _DIMSE_STATUS.search(body)
        if _RSP_TYPE.search(body) and status:
            statuses.append(int(status.group(1), 16))
    return ToolResult(proc.returncode, statuses, proc.stdout, proc.stderr,
                      elapsed=time.monotonic() - started)


def _qr_command(name: str, level: str, keys: Sequence[str], model: str,
                *options: str) -> list[str]:
    """`name -d -aet SCU -aec PACS <model> <options> -k QueryRetrieveLevel=<level> -k ...`
    (without the host and port)."""
    cmd = [tool(name), "-d", "-aet", SCU_AE, "-aec", SERVER_AE, model, *options]
    for k in [f"QueryRetrieveLevel={level}", *keys]:
        cmd += ["-k", k]
    return cmd


def findscu(port: int, level: str, keys: Sequence[str], outdir: Path, *, model: str = "-S",
            extra: Sequence[str] = ()) -> ToolResult:
    """findscu with `-X -od outdir`: the responses are read back in arrival order."""
    cmd = _qr_command("findscu", level, keys, model, "-X", "-od", str(outdir), *extra)
    return _find_into(outdir, [*cmd, "127.0.0.1", str(port)])


def find_with_file(port: int, query: Path, outdir: Path, *, called: str = SERVER_AE,
                   model: str = "-W", extra: Sequence[str] = ()) -> ToolResult:
    """findscu with the identifier in the file `query` (`-W`: the Modality Worklist
    model), `-X -od outdir`: the responses are read back in arrival order."""
    cmd = [tool("findscu"), "-d", "-aet", SCU_AE, "-aec", called, model, "-X", "-od",
           str(outdir), *extra, "127.0.0.1", str(port), str(query)]
    return _find_into(outdir, cmd)


def _find_into(outdir: Path, cmd: list[str]) -> ToolResult:
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("rsp*.dcm"):
        old.unlink()
    result = _run(cmd)
    result.responses = [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]
    return result


def movescu(port: int, level: str, keys: Sequence[str], dest: str, *, model: str = "-S",
            timeout: float = 60.0) -> ToolResult:
    """movescu asking the server to send to `dest` (no storage SCP of its own)."""
    cmd = _qr_command("movescu", level, keys, model, "-aem", dest)
    return _run([*cmd, "127.0.0.1", str(port)], timeout=timeout)


def getscu(port: int, level: str, keys: Sequence[str], outdir: Path, *,
           model: str = "-S", extra: Sequence[str] = ()) -> ToolResult:
    """getscu writing what it receives into `outdir` exactly as received (+B)."""
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = _qr_command("getscu", level, keys, model, "+B", "-od", str(outdir), *extra)
    return _run([*cmd, "127.0.0.1", str(port)], timeout=120)


class Storescp:
    """A dcmtk storescp on a free port writing into `outdir`; `stop()` ends it."""

    def __init__(self, outdir: Path, ae_title: str = "DEST", extra: Sequence[str] = ()) -> None:
        self.outdir = outdir
        self.ae_title = ae_title
        self.port = free_port()
        outdir.mkdir(parents=True, exist_ok=True)
        self._log_path = outdir.parent / f"storescp-{self.port}.log"
        self._log = open(self._log_path, "wb")
        # +xa: accept every transfer syntax; -uf: file names from the SOP Instance UID.
        self.proc = subprocess.Popen(
            [tool("storescp"), "-v", "-aet", ae_title, "+xa", "+B", "-uf", "-od", str(outdir),
             *extra, str(self.port)],
            env=dcmtk_env(), stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port),
                       what=f"storescp on port {self.port}")
        except BaseException:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {self.proc.returncode}: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")

    def files(self) -> dict[str, Path]:
        """SOP Instance UID → received file."""
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in self.outdir.iterdir() if p.is_file()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def concurrent_storescu(dcmtk: Dcmtk, port: int, dirs: Sequence[Path],
                        timeout: float = 120) -> list[tuple[int, str]]:
    """One storescu per directory (calling AE SEND<i>), all at once: (exit code, output)."""
    procs = [subprocess.Popen(
        [dcmtk.tool("storescu"), "-aet", f"SEND{i}", "-aec", "PACS", "+sd", "127.0.0.1",
         str(port), str(d)], env=dcmtk.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, d in enumerate(dirs)]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
