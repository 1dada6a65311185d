"""Human output of pacsctl: aligned tables, key/value blocks, a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
          headers: Sequence[str] | None = None, out: TextIO = sys.stdout) -> None:
    """Rows as aligned columns under a header line; "(none)" for no rows."""
    if not rows:
        print("(none)", file=out)
        return
    heads = list(headers or columns)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip(),
          file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)


def block(values: dict[str, Any], out: TextIO = sys.stdout) -> None:
    width = max((len(k) for k in values), default=0)
    for key, value in values.items():
        print(f"{key.ljust(width)}  {_cell(value)}", file=out)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Progress:
    """A one-line bar on a terminal (stderr); nothing when not a terminal."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self._label = label
        self._out = out
        self._live = out.isatty()

    def update(self, done: int, total: int) -> None:
        if not self._live:
            return
        width = 30
        filled = int(width * done / total) if total else width
        self._out.write(f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] "
                        f"{done}/{total}\033[K")
        self._out.flush()

    def finish(self) -> None:
        if self._live:
            self._out.write("\n")
            self._out.flush()
