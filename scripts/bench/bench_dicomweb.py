#!/usr/bin/env python3
"""DICOMweb next to Orthanc 1.10 with its DICOMweb plugin, on the same data, in one run.

    .venv/bin/python scripts/bench/bench_dicomweb.py [--instances 500] [--runs 10]

Each server (a real process on its own ports, an empty archive) gets, in this order:
  stow      STOW-RS of --instances CT instances (CT_small, new UIDs; one study, a series
            of 300 and one of the rest) in requests of 50 parts        instances/s
  qido      QIDO-RS `studies?PatientID=...` (median of --runs)            ms
  metadata  series metadata of the 300-instance series: the first request, then the
            median of --runs (gzip accepted, as browsers do)              ms
  frames    frames/1 of each instance of that series, one request each, transfer-syntax=*
                                                                           frames/s
pacs_server runs with its defaults (fsync on; --no-fsync turns it off); Orthanc with its
own (no fsync).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import HOST, OrthancServer, PacsServer, Server, free_port  # noqa: E402

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
BATCH = 50
SERIES_SIZE = 300


def _with_config(cmd: list[str], changes: dict[str, Any]) -> list[str]:
    """The server command, its JSON config file (the last argument) updated."""
    path = Path(cmd[-1])
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=1))
    return cmd


class PacsWeb(PacsServer):
    name = "pacs_server"

    def command(self) -> list[str]:
        self.http_port = free_port()
        return _with_config(super().command(), {
            "monitoring": {"metrics_port": self.http_port, "host": HOST}})

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web"


class OrthancWeb(OrthancServer):
    name = "Orthanc+DICOMweb"

    def command(self) -> list[str]:
        return _with_config(super().command(), {
            "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web"


def _instances(count: int) -> tuple[list[bytes], str, str]:
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study, big, rest = generate_uid(), generate_uid(), generate_uid()
    template.StudyInstanceUID = study
    template.PatientID = "BENCH-WEB"
    out = []
    for i in range(count):
        template.SeriesInstanceUID = big if i < SERIES_SIZE else rest
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = \
            generate_uid()
        template.InstanceNumber = i + 1
        buf = io.BytesIO()
        template.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out, study, big


def _multipart(parts: list[bytes]) -> bytes:
    body = b"".join(b"--BENCH\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    return body + b"--BENCH--\r\n"


def _median_ms(session: requests.Session, url: str, runs: int, **kw: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rsp = session.get(url, timeout=120, **kw)
        rsp.raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(server: PacsWeb | OrthancWeb, files: list[bytes], study: str, series: str,
            runs: int) -> dict[str, float]:
    s = requests.Session()
    s.trust_env = False
    root = server.root
    started = time.perf_counter()
    for i in range(0, len(files), BATCH):
        rsp = s.post(f"{root}/studies", data=_multipart(files[i:i + BATCH]), timeout=600,
                     headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                              "boundary=BENCH",
                              "Accept": "application/dicom+json"})
        rsp.raise_for_status()
    stow = len(files) / (time.perf_counter() - started)
    json_accept = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip"}
    qido = _median_ms(s, f"{root}/studies?PatientID=BENCH-WEB", runs, headers=json_accept)
    url = f"{root}/studies/{study}/series/{series}/metadata"
    started = time.perf_counter()
    first = s.get(url, headers=json_accept, timeout=600)
    first.raise_for_status()
    cold = (time.perf_counter() - started) * 1000
    assert len(first.json()) == SERIES_SIZE, len(first.json())
    warm = _median_ms(s, url, runs, headers=json_accept)
    sops = [i["00080018"]["Value"][0] for i in first.json()]
    frame_accept = {"Accept": "multipart/related; type=application/octet-stream; "
                              "transfer-syntax=*"}
    started = time.perf_counter()
    for sop in sops:
        rsp = s.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                    headers=frame_accept, timeout=120)
        rsp.raise_for_status()
    frames = len(sops) / (time.perf_counter() - started)
    return {"stow_per_s": stow, "qido_ms": qido, "metadata_first_ms": cold,
            "metadata_warm_ms": warm, "frames_per_s": frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=500)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--no-fsync", action="store_true",
                   help="pacs_server without fsync (storage.fsync, synchronous=normal), as "
                        "Orthanc runs")
    args = p.parse_args(argv)
    files, study, series = _instances(max(args.instances, SERIES_SIZE))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        for cls in (PacsWeb, OrthancWeb):
            workdir = Path(tmp) / cls.name.replace("+", "-")
            server: Server = (PacsWeb(workdir, fsync=False, synchronous="normal")
                              if cls is PacsWeb and args.no_fsync else cls(workdir))
            with server:
                results[cls.name] = measure(server, files, study, series, args.runs)  # type: ignore[arg-type]
    rows = [("STOW-RS, instances/s", "stow_per_s", "{:.0f}"),
            ("QIDO-RS studies, ms (median)", "qido_ms", "{:.1f}"),
            (f"series metadata ({SERIES_SIZE}), first, ms", "metadata_first_ms", "{:.0f}"),
            (f"series metadata ({SERIES_SIZE}), warm, ms (median)", "metadata_warm_ms",
             "{:.1f}"),
            ("frames (one request each), frames/s", "frames_per_s", "{:.0f}")]
    names = list(results)
    print("| measure | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
