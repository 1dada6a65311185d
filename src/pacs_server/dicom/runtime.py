"""Process-wide settings of pynetdicom and pydicom, applied by the app at start.

They are global to the libraries, so they are set by an explicit call (`PacsApp.start`,
store_scp) and never at import time: other packages and tests can import `dicom/`
without changing how pydicom or pynetdicom behave for them.
"""

from __future__ import annotations

import sys
import tempfile
import threading

from pydicom import config as pydicom_config
from pynetdicom import _config

# The interpreter's thread switch interval (default 5 ms): how long a thread that wants
# the GIL waits for the running one to let go. Each DIMSE exchange hands the GIL between
# an association's two threads (the DUL thread reads and sends, the association thread
# handles), so it bounds that latency; docs/performance.md has the measurement.
SWITCH_INTERVAL_S = 0.005

_lock = threading.Lock()
_receivers: list[str] = []
_previous_tempdir: str | None = None


def configure_libraries() -> None:
    """Set what the server needs of pynetdicom and pydicom (idempotent).

    - Stream every received dataset to a file instead of memory (large instances), and
      send a file given by path from the file in chunks (C-GET/C-MOVE sub-operations,
      dicom/transport.py); without it pynetdicom reads and decodes the whole file.
    - Keep patient identifiers out of pynetdicom's own logs, and bind none of its
      per-PDU and per-message logging handlers: they format every PDU and message even
      when nothing is logged at debug level, our own association and operation lines
      replace them, and they look their decoder up by exact class, so the PDU and
      message classes of dicom/reactor.py and dicom/transport.py (subclasses) made them
      raise on every association.
    - Skip pydicom's read-time value validation: it checks every value it reads (each
      UID pynetdicom decodes from a PDU, each indexed header value) against the
      standard's regular expressions only to emit warnings, and nothing acts on them.
      The checks that matter are ours (storage/layout.py for anything that names a
      file, services/ingest.py for what is indexed) and pynetdicom's (UID length, empty
      values). Skipping pydicom's cuts the decode of storescu's A-ASSOCIATE-RQ (128
      presentation contexts) from 6.7-10.5 to 4.5 ms.
    - The thread switch interval (`SWITCH_INTERVAL_S`).
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def receive_into(directory: str) -> None:
    """Make pynetdicom's chunked receive write its temporary files in `directory`.

    pynetdicom creates them with `NamedTemporaryFile()` and no directory argument, so
    the only lever is `tempfile.tempdir`; we point it at the archive's `.incoming`
    (same filesystem as the archive, not a RAM-backed /tmp, and emptied at every start)
    while a listener runs, and restore it when the last one stops.
    """
    global _previous_tempdir
    with _lock:
        if not _receivers:
            _previous_tempdir = tempfile.tempdir
        _receivers.append(directory)
        tempfile.tempdir = directory


def stop_receiving_into(directory: str) -> None:
    """Undo `receive_into(directory)`."""
    global _previous_tempdir
    with _lock:
        if directory in _receivers:
            _receivers.remove(directory)
        tempfile.tempdir = _receivers[-1] if _receivers else _previous_tempdir
