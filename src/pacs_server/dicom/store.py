"""Storage SCP (C-STORE, PS3.4 Annex B): a thin handler over ArchiveService.

pynetdicom has already streamed the dataset to a temporary file (chunked receive), so
memory stays flat whatever the instance size. Returns Success only after the archive
reports the file fsynced and the index row committed.
"""

from __future__ import annotations

import time

import structlog
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from pacs_server.dicom.associations import AssociationTracker
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.status import SUCCESS, Service, failure
from pacs_server.errors import DuplicateInstance, PacsError
from pacs_server.metrics import Metrics
from pacs_server.services.archive import ArchiveService
from pacs_server.services.ingest import StagedInstance

log = structlog.get_logger(__name__)


def handle_store(event: Event, archive: ArchiveService, bridge: LoopBridge,
                 tracker: AssociationTracker, metrics: Metrics) -> int | Dataset:
    """Store one instance.

    Returns:
        0x0000 stored (or already stored, policy `ignore`); otherwise a failure status
        from dicom/status.py with an Error Comment: 0x0111 duplicate (policy `reject`),
        0xA700 out of resources, 0xA900 dataset does not match, 0xC000 cannot understand.
    """
    started = time.perf_counter()
    calling_ae = event.assoc.requestor.ae_title
    request = event.request
    staged: StagedInstance | None = None
    try:
        staged = archive.stage(event.dataset_path, str(event.context.transfer_syntax),
                               str(request.AffectedSOPClassUID or ""), calling_ae)
        if str(request.AffectedSOPInstanceUID) != staged.record.sop_instance_uid:
            log.warning("c_store.uid_mismatch", request_uid=str(request.AffectedSOPInstanceUID),
                        dataset_uid=staged.record.sop_instance_uid)
        outcome = archive.store(staged, bridge.run)
    except PacsError as exc:
        archive.discard(staged)
        if not isinstance(exc, DuplicateInstance):
            archive.count_failure()
        status = failure(Service.C_STORE, exc)
        log.warning("c_store.failed", calling_ae=calling_ae, status=f"0x{status.Status:04X}",
                    error=str(exc), sop_instance_uid=str(request.AffectedSOPInstanceUID))
        tracker.operation(event, "C-STORE", status.Status)
        return status
    except Exception as exc:
        archive.discard(staged)
        archive.count_failure()
        log.error("c_store.error", calling_ae=calling_ae, exc_info=exc)
        status = failure(Service.C_STORE, exc)
        tracker.operation(event, "C-STORE", status.Status)
        return status
    size = staged.record.size
    metrics.store_bytes.inc(size)
    metrics.store_seconds.observe(time.perf_counter() - started)
    tracker.operation(event, "C-STORE", SUCCESS, size)
    log.debug("c_store.stored", sop_instance_uid=staged.record.sop_instance_uid,
              outcome=outcome.value, bytes=size)
    return SUCCESS
