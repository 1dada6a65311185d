"""Prometheus instruments, owned by one object with its own registry (no globals).

The HTTP side (web/) serves `exposition()`; gauges of what the index and the archive
hold are set just before each scrape (`set_inventory`).

With worker processes (`server.workers`), every process of the server writes its
samples to files in $PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode,
set up by the supervisor before any instrument exists) and the supervisor's
`exposition()` adds them up: counters and histograms of a worker that died keep
counting in the total, the live gauge of a dead one is dropped (`process_dead`).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every instrument of the server. Tests build their own with a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.dimse_requests = Counter(
            "pacs_dimse_requests", "DIMSE requests handled, by service and status",
            ["service", "status"], registry=r)
        self.store_bytes = Counter(
            "pacs_store_bytes", "bytes of instances written to the archive", registry=r)
        self.store_seconds = Histogram(
            "pacs_store_seconds", "C-STORE handling time (parse, write, fsync, index)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5), registry=r)
        self.dimse_seconds = Histogram(
            "pacs_dimse_seconds", "DIMSE operation handling time, by operation",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30), registry=r)
        self.associations_active = Gauge(
            "pacs_association_active", "associations currently established", registry=r,
            multiprocess_mode="livesum")
        self.associations = Counter(
            "pacs_associations", "associations by outcome (accepted, rejected, aborted, released)",
            ["outcome"], registry=r)
        self.associations_rejected = Counter(
            "pacs_associations_rejected", "associations refused by policy or limits, by reason",
            ["reason"], registry=r)
        self.connections_refused = Counter(
            "pacs_connections_refused",
            "connections closed before associating (too many unassociated), by reason",
            ["reason"], registry=r)
        self.index_batch = Histogram(
            "pacs_index_commit_batch_size", "instances per index transaction (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.index_retries = Counter(
            "pacs_index_write_retries",
            "index transactions retried: busy (SQLite locked, serialisation failure, lost "
            "connection) or integrity (a row another process created)", ["reason"], registry=r)
        self.index_lock_wait = Histogram(
            "pacs_index_writer_lock_wait_seconds",
            "per index transaction on SQLite, the wait for another process's writer "
            "(worker processes or servers on one file; 0 when none held it)",
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=r)
        self.find_matches = Counter(
            "pacs_find_matches", "C-FIND responses sent", ["level"], registry=r)
        self.retrieved = Counter(
            "pacs_retrieve_instances", "instances handed to C-MOVE/C-GET sub-operations",
            ["service"], registry=r)
        self.commitment_reports = Counter(
            "pacs_commitment_reports", "Storage Commitment reports by outcome "
            "(same_association, new_association, retry, abandoned)", ["outcome"], registry=r)
        self.bytes_sent = Counter(
            "pacs_bytes_sent", "bytes of stored instances sent by C-GET/C-MOVE", registry=r)
        self.index_entities = Gauge(
            "pacs_index_entities", "rows in the index, by level", ["level"], registry=r,
            multiprocess_mode="mostrecent")
        self.archive_bytes = Gauge(
            "pacs_archive_bytes", "bytes of indexed instances in the archive", registry=r,
            multiprocess_mode="mostrecent")
        self.archive_free_bytes = Gauge(
            "pacs_archive_free_bytes", "free space on the archive's filesystem", registry=r,
            multiprocess_mode="mostrecent")
        self.http_requests = Counter(
            "pacs_http_requests", "HTTP requests, by route and status", ["route", "status"],
            registry=r)
        self.worker_restarts = Counter(
            "pacs_worker_restarts", "worker processes restarted after they died "
            "(server.workers)", registry=r)
        ProcessCollector(registry=r)

    def set_inventory(self, counts: dict[str, int], free_bytes: int) -> None:
        """What the index and the disk hold, set just before a scrape."""
        for level in ("patients", "studies", "series", "instances"):
            if level in counts:
                self.index_entities.labels(level).set(counts[level])
        if "bytes" in counts:
            self.archive_bytes.set(counts["bytes"])
        self.archive_free_bytes.set(free_bytes)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of every instrument, and its content type (of every
        process of the server in multiprocess mode)."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)      # the supervisor's own process
        return generate_latest(registry), CONTENT_TYPE_LATEST


def process_dead(pid: int) -> None:
    """Drop the live gauges of a worker process that ended (multiprocess mode)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
