"""A pynetdicom Storage SCP on a free port: a C-MOVE destination that can fail SOP classes;
`start_listener()`, the non-blocking `AE.start_server` of every test listener."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from support.instances import CR_IMAGE, CT_IMAGE, MR_IMAGE, SECONDARY_CAPTURE
from support.scu import NATIVE, SUCCESS, VERIFICATION

# How often a test listener's accept loop looks at its shutdown flag. With socketserver's
# default of 0.5 s (what `AE.start_server(block=False)` uses) every `stop()` took 0.5 s.
ACCEPT_POLL_S = 0.05


def start_listener(ae: AE, address: tuple[str, int],
                   evt_handlers: list[Any]) -> ThreadedAssociationServer:
    """`ae.start_server(address, block=False, evt_handlers=...)`, but the server's
    `shutdown()` returns within `ACCEPT_POLL_S`."""
    server = ae.make_server(address, evt_handlers=evt_handlers)
    threading.Thread(target=server.serve_forever, args=(ACCEPT_POLL_S,),
                     name=f"AcceptorServer-{ae.ae_title}", daemon=True).start()
    ae._servers.append(server)      # as start_server does: shutdown() removes it
    return server


class StorageScp:
    """Accepts `sop_classes` in `transfer_syntaxes` (only those are negotiated, besides
    Verification) and answers 0xA700 to instances of `fail_classes`; `received` and
    `failed` say what arrived."""

    def __init__(self, ae_title: str = "PYDEST", fail_classes: Iterable[str] = (),
                 sop_classes: Iterable[str] = (CT_IMAGE, MR_IMAGE, SECONDARY_CAPTURE,
                                               CR_IMAGE),
                 transfer_syntaxes: Iterable[str] = NATIVE) -> None:
        self.ae_title = ae_title
        self.fail_classes = set(fail_classes)
        self.received: dict[str, Dataset] = {}
        self.failed: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.network_timeout = 30
        ae.add_supported_context(VERIFICATION)
        for uid in sop_classes:
            ae.add_supported_context(uid, list(transfer_syntaxes))
        self.server = start_listener(ae, ("127.0.0.1", 0),
                                     evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            if str(ds.SOPClassUID) in self.fail_classes:
                self.failed.append(str(ds.SOPInstanceUID))
                return 0xA700
            self.received[str(ds.SOPInstanceUID)] = ds
        return SUCCESS

    def clear(self) -> None:
        """Forget what arrived (a module-scoped destination reused by several tests)."""
        with self._lock:
            self.received.clear()
            self.failed.clear()

    def stop(self) -> None:
        self.server.shutdown()
