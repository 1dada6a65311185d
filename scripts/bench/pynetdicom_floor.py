#!/usr/bin/env python3
"""The pynetdicom floor: a Storage SCP that does nothing but answer Success.

    .venv/bin/python scripts/bench/pynetdicom_floor.py chunked|memory PORT

Same AE set-up as pacs_server (every storage class x every transfer syntax, TCP_NODELAY,
shared supported contexts), no parsing, no file, no index. Whatever throughput storescu
gets against it is the most any handler on top of pynetdicom can reach.
"""

from __future__ import annotations

import sys

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from pacs_server.dicom.associations import set_nodelay
from pacs_server.dicom.server import TRANSFER_SYNTAXES, shared_contexts
from pacs_server.sop_classes import all_storage_classes


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    _config.STORE_RECV_CHUNKED_DATASET = mode == "chunked"
    ae = AE("FLOOR")
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    for uid in all_storage_classes():
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), contexts=shared_contexts(ae.supported_contexts),
                    evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000),
                                  (evt.EVT_CONN_OPEN, set_nodelay)])


if __name__ == "__main__":
    main()
