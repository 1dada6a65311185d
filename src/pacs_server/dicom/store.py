"""Storage SCP (C-STORE, PS3.4 Annex B): a thin handler over ArchiveService.

pynetdicom has already streamed the dataset to a temporary file (chunked receive), so
memory stays flat whatever the instance size. Returns Success only after the archive
reports the file fsynced and the index row committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.receive import refused_data_set
from pacs_server.dicom.service import DicomService, Operation, Reply, contexts_for
from pacs_server.dicom.status import SUCCESS, Service
from pacs_server.errors import StorageFull
from pacs_server.metrics import Metrics
from pacs_server.services.archive import ArchiveService

log = structlog.get_logger(__name__)


def handle_store(event: Event, archive: ArchiveService, bridge: LoopBridge,
                 metrics: Metrics) -> Reply:
    """Store one instance.

    Returns:
        0x0000 stored (or already stored, policy `ignore`). Failures are raised and
        mapped by the handler wrapper: 0x0111 duplicate (policy `reject`), 0xA700 out of
        resources (also when the archive was below storage.min_free_bytes as the data
        set arrived: it was dropped unread), 0xA900 dataset does not match, 0xC000
        cannot understand.
    """
    started = time.perf_counter()
    request: Any = event.request      # a C_STORE (the handler is bound for C-STORE)
    refusal = refused_data_set(request)
    if refusal is not None:
        raise StorageFull(f"not received: {refusal}")
    stored = archive.receive(event.dataset_path, str(event.context.transfer_syntax),
                             str(request.AffectedSOPClassUID or ""),
                             event.assoc.requestor.ae_title, bridge,
                             request_uid=str(request.AffectedSOPInstanceUID or ""),
                             adopt=True)
    metrics.store_bytes.inc(stored.size)
    metrics.store_seconds.observe(time.perf_counter() - started)
    log.debug("c_store.stored", sop_instance_uid=stored.sop_instance_uid,
              outcome=stored.outcome.value, bytes=stored.size)
    return Reply(SUCCESS, nbytes=stored.size,
                 details={"patient_id": stored.patient_id, "study_uid": stored.study_uid})


def service(sop_classes: Iterable[str], archive: ArchiveService, bridge: LoopBridge,
            metrics: Metrics) -> DicomService:
    """C-STORE for the accepted storage classes.

    `scp_role` lets a C-GET SCU take the Storage SCP role (PS3.7 D.3.3.4).
    """
    return DicomService(
        name="Storage",
        contexts=contexts_for(sop_classes, scu_role=False, scp_role=True),
        operations=(Operation(evt.EVT_C_STORE,
                              lambda event: handle_store(event, archive, bridge, metrics),
                              Service.C_STORE, "C-STORE"),),
        receive_gate=archive.check_free_space,
    )
