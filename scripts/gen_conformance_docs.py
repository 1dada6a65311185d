#!/usr/bin/env python3
"""Render the SOP class and transfer syntax tables of docs/conformance.md from the code.

The lists come from what the server really negotiates: `all_storage_classes()` (the
storage SOP classes of pydicom's UID dictionary, minus the exclusions in
pacs_server.sop_classes) and `dicom.server.TRANSFER_SYNTAXES`. They change with the
pydicom version, so regenerate after upgrading it.

    python scripts/gen_conformance_docs.py            rewrite the generated blocks
    python scripts/gen_conformance_docs.py --check    exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import UID

from pacs_server.dicom.server import TRANSFER_SYNTAXES
from pacs_server.sop_classes import all_storage_classes, sop_class_name

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE_MD = ROOT / "docs" / "conformance.md"
BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED (?P<name>[a-z-]+) by scripts/gen_conformance_docs\.py -->\n)"
    r".*?"
    r"(<!-- END GENERATED (?P=name) -->)",
    re.DOTALL)


def storage_classes() -> str:
    uids = all_storage_classes()
    rows = [f"{len(uids)} SOP classes, each accepted as SCP with every transfer syntax below.",
            "", "| SOP Class | UID |", "| --- | --- |"]
    rows += [f"| {sop_class_name(uid)} | `{uid}` |"
             for uid in sorted(uids, key=lambda u: (sop_class_name(u).lower(), u))]
    return "\n".join(rows)


def transfer_syntaxes() -> str:
    rows = ["| Transfer Syntax | UID |", "| --- | --- |"]
    rows += [f"| {UID(ts).name} | `{ts}` |" for ts in TRANSFER_SYNTAXES]
    return "\n".join(rows)


RENDERERS: dict[str, Callable[[], str]] = {
    "storage-sop-classes": storage_classes,
    "transfer-syntaxes": transfer_syntaxes,
}


def render(current: str) -> str:
    seen: set[str] = set()

    def _sub(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in RENDERERS:
            raise SystemExit(f"{CONFORMANCE_MD}: unknown generated block {name!r}")
        seen.add(name)
        return f"{m.group(1)}\n{RENDERERS[name]()}\n\n{m.group(3)}"

    out = BLOCK.sub(_sub, current)
    missing = set(RENDERERS) - seen
    if missing:
        raise SystemExit(f"{CONFORMANCE_MD}: generated blocks missing: "
                         f"{', '.join(sorted(missing))}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="report an out-of-date file instead of writing it")
    args = parser.parse_args(argv)
    current = CONFORMANCE_MD.read_text(encoding="utf-8")
    wanted = render(current)
    if wanted == current:
        return 0
    if args.check:
        print(f"{CONFORMANCE_MD.relative_to(ROOT)} is out of date: "
              "run python scripts/gen_conformance_docs.py", file=sys.stderr)
        return 1
    CONFORMANCE_MD.write_text(wanted, encoding="utf-8")
    print(f"wrote {CONFORMANCE_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
