#!/usr/bin/env python3
"""In-process cost of building one pending C-FIND-RSP, before and after dicom/find_scp.py.

    .venv/bin/python scripts/bench/find_response_micro.py [--loops 2000] [--rounds 5]

One STUDY answer of 12 elements (what scripts/bench/find_cpu.py asks for), from its
element list (services/answers.py) to the P-DATA primitives handed to the DUL:

- upstream: the Dataset, pydicom's encode (pynetdicom `dsutils.encode`), the C_FIND
  primitive's setters, and pynetdicom's message encoding (`primitive_to_message` +
  `encode_msg`), as the stock transport does;
- events-before: the same, with the command set encoded directly
  (`reactor.encode_response`), as the events transport did before find_scp.py;
- encoded: `answers.encode` and the command set encoded once (find_scp.py).

Thread CPU time per response (`time.thread_time`), rounds alternating, medians printed
with the load average. The bytes of the three are checked to be equal first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode as upstream_encode

from pacs_server.dicom.reactor import encode_response, pdv_fragments
from pacs_server.services import answers

SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"
ANSWER: list[answers.Element] = [
    (0x00080020, "DA", "20150312"), (0x00080050, "SH", "A0000123"),
    (0x00080061, "CS", ["CT"]), (0x00100010, "PN", "SMITH^JOHN"),
    (0x00100020, "LO", "P000061"), (0x0020000D, "UI", "2.25.1234567890123456789012345678"),
    (0x00201208, "IS", "50"), (0x00080052, "CS", "STUDY"), (0x00080054, "AE", "PACS"),
    (0x00080056, "CS", "ONLINE"), (0x00081030, "LO", None), (0x00200010, "SH", None),
]
MAX_PDU = 16382


def _primitive(data: bytes) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageID = 1
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = SOP_CLASS
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(data)
    return rsp


def upstream() -> list[bytes]:
    rsp = _primitive(upstream_encode(answers.to_dataset(ANSWER), True, True) or b"")
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return [p.presentation_data_value_list[0][1] for p in msg.encode_msg(1, MAX_PDU)]


def events_before() -> list[bytes]:
    rsp = _primitive(upstream_encode(answers.to_dataset(ANSWER), True, True) or b"")
    command = encode_response(rsp)
    assert command is not None
    pdatas = pdv_fragments(command, 1, MAX_PDU, b"\x01", b"\x03") + \
        pdv_fragments(rsp.Identifier.getvalue(), 1, MAX_PDU, b"\x00", b"\x02")
    return [p.presentation_data_value_list[0][1] for p in pdatas]


_COMMAND = encode_response(_primitive(b"\0\0"))


def encoded() -> list[bytes]:
    assert _COMMAND is not None
    pdatas = pdv_fragments(_COMMAND, 1, MAX_PDU, b"\x01", b"\x03") + \
        pdv_fragments(answers.encode(ANSWER, True), 1, MAX_PDU, b"\x00", b"\x02")
    return [p.presentation_data_value_list[0][1] for p in pdatas]


def per_call_us(fn: Callable[[], Any], loops: int) -> float:
    t0 = time.thread_time()
    for _ in range(loops):
        fn()
    return 1e6 * (time.thread_time() - t0) / loops


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loops", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE  # as the server
    kinds = {"upstream": upstream, "events-before": events_before, "encoded": encoded}
    assert upstream() == events_before() == encoded()
    rows: dict[str, list[float]] = {k: [] for k in kinds}
    loads = []
    for _ in range(a.rounds):
        for name, fn in kinds.items():
            rows[name].append(per_call_us(fn, a.loops))
        loads.append(os.getloadavg()[0])
    print("| path | µs of CPU per pending response (rounds) | median |\n| --- | --- | --- |")
    for name, values in rows.items():
        print(f"| {name} | " + " / ".join(f"{v:.0f}" for v in values)
              + f" | **{statistics.median(values):.0f}** |")
    print(f"\n1-minute load average {min(loads):.1f}-{max(loads):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
