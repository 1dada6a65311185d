"""Prometheus instruments, owned by one object with its own registry (no globals)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pacs_server.errors import StartupError


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
            "pacs_association_active", "associations currently established", registry=r)
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
        self.find_matches = Counter(
            "pacs_find_matches", "C-FIND responses sent", ["level"], registry=r)
        self.retrieved = Counter(
            "pacs_retrieve_instances", "instances handed to C-MOVE/C-GET sub-operations",
            ["service"], registry=r)
        self.commitment_reports = Counter(
            "pacs_commitment_reports", "Storage Commitment reports by outcome "
            "(same_association, new_association, retry, abandoned)", ["outcome"], registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on a side port; returns the bound port (port 0 = ephemeral)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MetricsEndpoint:
    """The /metrics side port as a component of the server."""

    name = "metrics"

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self.port: int | None = None

    async def start(self) -> None:
        try:
            self.port = self._metrics.serve(self._host, self._port)
        except OSError as exc:
            raise StartupError(f"metrics port {self._port} on {self._host} cannot be bound: "
                               f"{exc.strerror}") from None

    async def close(self) -> None:
        self._metrics.stop()
