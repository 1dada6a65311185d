#!/usr/bin/env python3
"""In-process cost of a C-STORE's response and of its received P-DATA-TF PDUs, before
and after dicom/storage_scp.py and receive.read_pdata.

    .venv/bin/python scripts/bench/store_response_micro.py [--loops 5000] [--rounds 5]

- response, events-before: the C_STORE primitive through its setters,
  `StorageServiceClass.validate_status`, `reactor.encode_response`, one P-DATA per
  fragment and DT-1's `P_DATA_TF(primitive).encode()` (what the events transport did);
- response, storage_scp: `store_rsp_command` and the finished PDU (`pdata_tf`) in a
  `RawPData`;
- PDU read, upstream: `_decode_pdu` as pynetdicom runs it with its standard handlers
  bound (EVT_DATA_RECV, EVT_PDU_RECV: an Event each), then DT-2's `to_primitive()`;
- PDU read, read_pdata: the PDV list read from the bytes, then `to_primitive()`.

The two PDUs of a CT_small C-STORE are read (the command set, and a data set fragment
of the default 16 KiB PDU). Thread CPU per operation (`time.thread_time`), rounds
alternating, medians with the load average; the bytes and PDVs are checked to be equal
first. Benchmark evidence only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.service_class import StorageServiceClass

from pacs_server.dicom.reactor import encode_response, pdv_fragments
from pacs_server.dicom.receive import read_pdata
from pacs_server.dicom.storage_scp import _status_fields, store_rsp_command
from pacs_server.dicom.store_send import RawPData, fragment_size, pdata_tf

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "2.25.123456789012345678901234567890123"
MAX_PDU = 16384


class _Assoc:
    """The handlers pynetdicom binds on every association (and its lock)."""

    lock = threading.RLock()
    abort = _abort_blocking = _abort_nonblocking = None   # swapped by evt.trigger

    def get_handlers(self, event: Any) -> Any:
        return [(standard_pdu_recv_handler, None)] if event is evt.EVT_PDU_RECV else []


class _Dul:
    assoc = _Assoc()


def response_before() -> bytes:
    rsp = C_STORE()
    rsp.MessageID = 1
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPInstanceUID = INSTANCE
    rsp.AffectedSOPClassUID = CT
    rsp = StorageServiceClass(None).validate_status(0x0000, rsp)  # type: ignore[arg-type]
    command = encode_response(rsp)
    assert command is not None
    return b"".join(bytes(P_DATA_TF(p).encode())
                    for p in pdv_fragments(command, 1, MAX_PDU, b"\x01", b"\x03"))


def response_now() -> bytes:
    fields = _status_fields(0x0000)
    assert fields is not None
    command = store_rsp_command(1, CT, INSTANCE, *fields)
    return RawPData(b"".join(pdata_tf(command, 1, fragment_size(MAX_PDU), 0x01,
                                      0x03))).encoded


def _pdu(control: int, data: bytes) -> bytearray:
    return bytearray(struct.pack(">BBIIBB", 4, 0, len(data) + 6, len(data) + 2, 1, control)
                     + data)


PDUS = [_pdu(0x03, bytes(130)), _pdu(0x00, bytes(MAX_PDU - 6))]


def read_before() -> list[Any]:
    dul = _Dul()
    out = []
    for raw in PDUS:
        pdu, _event = DULServiceProvider._decode_pdu(dul, raw)  # type: ignore[arg-type]
        out.append(pdu.to_primitive().presentation_data_value_list)
    return out


def read_now() -> list[Any]:
    assoc = _Assoc()
    out = []
    for raw in PDUS:
        pdu = read_pdata(assoc, bytes(raw))
        assert pdu is not None
        out.append(pdu.to_primitive().presentation_data_value_list)
    return out


def _time(fn: Callable[[], Any], loops: int) -> float:
    start = time.thread_time()
    for _ in range(loops):
        fn()
    return (time.thread_time() - start) / loops * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    assert response_before() == response_now()
    assert read_before() == read_now()
    cases = {"response: events before": response_before, "response: storage_scp": response_now,
             "2 PDUs read: upstream": read_before, "2 PDUs read: read_pdata": read_now}
    times: dict[str, list[float]] = {name: [] for name in cases}
    loads = []
    for r in range(a.rounds):
        order = list(cases.items()) if r % 2 == 0 else list(reversed(cases.items()))
        for name, fn in order:
            times[name].append(_time(fn, a.loops))
        loads.append(os.getloadavg()[0])
    print(f"{a.rounds} rounds x {a.loops}, load {min(loads):.1f}-{max(loads):.1f}\n")
    print("| path | µs (median) | rounds |\n| --- | --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | "
              f"{', '.join(f'{v:.1f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
