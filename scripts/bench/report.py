"""Results: collected per (row, server), rendered as markdown tables and saved as JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SERVERS = ["pacs_server", "Orthanc", "storescp"]


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, server: str) -> Cell:
        return self.cells.setdefault(server, Cell())


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.rss: dict[str, dict[str, float]] = {}      # phase -> server -> peak MB
        self.meta: dict[str, Any] = {}

    def row(self, key: str, label: str, unit: str, higher_is_better: bool = True) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, higher_is_better)
        return self.rows[key]

    def add(self, row: Row, server: str, value: float | None, error: str | None = None,
            rss_phase: str | None = None, rss_mb: float | None = None,
            note: str | None = None) -> None:
        c = row.cell(server)
        if value is not None:
            c.values.append(value)
        if error:
            c.errors.append(error)
        if note and note not in c.notes:
            c.notes.append(note)
        if rss_mb is not None:
            c.rss_mb.append(rss_mb)
            phase = rss_phase or row.label
            bucket = self.rss.setdefault(phase, {})
            bucket[server] = max(bucket.get(server, 0.0), rss_mb)

    # ---------------------------------------------------------------- rendering
    def servers(self) -> list[str]:
        seen = {s for r in self.rows.values() for s in r.cells}
        # pacs_server-w2 and the like (server.workers) next to pacs_server
        workers = sorted(s for s in seen if s.startswith("pacs_server-w"))
        return [s for s in SERVERS[:1] + workers + SERVERS[1:] if s in seen]

    def markdown(self) -> str:
        servers = self.servers()
        ratio_cols = [s for s in ("Orthanc", "storescp")
                      if s in servers and "pacs_server" in servers]
        pacs = [s for s in servers if s.startswith("pacs_server")]
        pairs = [(p, s) for s in ratio_cols for p in pacs]
        head = ["Measurement", "unit", *servers,
                *[f"{p.replace('pacs_server', 'pacs')}/{s}" for p, s in pairs]]
        lines = [_row(head), _row(["---"] * len(head))]
        for r in self.rows.values():
            cells = [_fmt_cell(r.cells.get(s)) for s in servers]
            ratios = [_ratio(r, p, s) for p, s in pairs]
            arrow = "↑" if r.higher_is_better else "↓"
            lines.append(_row([r.label, f"{r.unit} {arrow}", *cells, *ratios]))
        out = ["\n".join(lines)]
        out.append("")
        out.append("↑ higher is better, ↓ lower is better. Cells are medians over the runs "
                   "(n = number of values); a ratio > 1 favours pacs_server for ↑ rows "
                   "and Orthanc/storescp for ↓ rows.")
        if self.rss:
            out.append("")
            rss_servers = [s for s in self.servers() if any(s in v for v in self.rss.values())]
            lines = [_row(["Peak RSS (MB) during", *rss_servers]),
                     _row(["---"] * (1 + len(rss_servers)))]
            for phase, per in self.rss.items():
                lines.append(_row([phase, *[f"{per[s]:.0f}" if s in per else "–"
                                            for s in rss_servers]]))
            out.append("\n".join(lines))
        notes = [f"- {r.label} / {s}: {n}" for r in self.rows.values()
                 for s, c in r.cells.items() for n in c.notes]
        if notes:
            out.append("")
            out.append("Notes:")
            out.extend(notes)
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta,
                "rows": {k: {"label": r.label, "unit": r.unit,
                             "higher_is_better": r.higher_is_better,
                             "cells": {s: {**asdict(c), "median": c.median()}
                                       for s, c in r.cells.items()}}
                         for k, r in self.rows.items()},
                "peak_rss_mb": self.rss}

    def save(self, out_dir: Path, stamp: str, header: str) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / f"{stamp}.md"
        js = out_dir / f"{stamp}.json"
        md.write_text(header + "\n\n" + self.markdown() + "\n")
        js.write_text(json.dumps(self.to_json(), indent=1))
        return md, js


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _fmt_cell(c: Cell | None) -> str:
    if c is None:
        return "–"
    if not c.values:
        err = c.errors[0] if c.errors else "no value"
        return f"n/a (error: {_short(err)})"
    text = f"{_num(c.median() or 0.0)} (n={len(c.values)})"
    if c.errors:
        text += f" [{len(c.errors)} failed: {_short(c.errors[0], 60)}]"
    return text


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _ratio(r: Row, a: str, b: str) -> str:
    ca, cb = r.cells.get(a), r.cells.get(b)
    if not ca or not cb or ca.median() is None or cb.median() is None or not cb.median():
        return "–"
    return f"{(ca.median() or 0.0) / (cb.median() or 1.0):.2f}x"


# ---------------------------------------------------------------- environment

def environment(work: Path) -> dict[str, Any]:
    """Machine and software description for the report header."""
    def cmd(args: list[str]) -> str:
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=20)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError):
        mem_kb = 0
    df = subprocess.run(["df", "--output=source,fstype", str(work)], capture_output=True,
                        text=True, timeout=20)
    dev = df.stdout.split()[2:4]
    rot = "?"
    if dev:
        name = Path(dev[0]).name.rstrip("0123456789")
        try:
            rot = Path(f"/sys/block/{name}/queue/rotational").read_text().strip()
        except OSError:
            pass
    repo = Path(__file__).resolve().parents[2]
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "disk": " ".join(dev) + f" (rotational={rot})",
        "python": platform.python_version(),
        "pacs_server_commit": cmd(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
        "pacs_server_dirty": bool(cmd(["git", "-C", str(repo), "status", "--porcelain",
                                       "src"]) not in ("", "?")),
        "orthanc": cmd(["Orthanc", "--version"]),
        "dcmtk": cmd(["storescu", "--version"]).replace("$", "").replace("dcmtk:", "").strip(),
    }
