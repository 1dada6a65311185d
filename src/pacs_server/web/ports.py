"""What the HTTP side needs from the server: one object, built by the composition root.

Handlers are thin over it; every query, store and association action it performs is the
same code the DICOM side uses (services/, index/, dicom/associations.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pacs_server.services.dicomweb import DicomWeb


class Control(Protocol):
    """The running server as the HTTP side sees it. Plain values in and out."""

    def token(self) -> str:
        """The admin bearer token now in force ("" = the API is refused)."""

    def audit(self, action: str, outcome: str, **fields: Any) -> None:
        """Record an admin API call in the audit log."""

    def dicomweb(self) -> DicomWeb | None:
        """The DICOMweb use cases (None without an index)."""

    def audit_web(self, service: str, status: int, **fields: Any) -> None:
        """Record a DICOMweb request in the audit log."""

    async def status(self) -> dict[str, Any]: ...

    async def health(self) -> str | None:
        """None when healthy, else a one-line reason."""

    async def metrics(self) -> tuple[bytes, str]:
        """Prometheus text and its content type."""

    async def associations(self) -> list[dict[str, Any]]: ...

    async def association(self, assoc_id: str) -> dict[str, Any] | None:
        """One live association by id: "7", or "2-7" (worker 2) with server.workers."""

    async def disconnect(self, assoc_id: str) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def browse(self, level: str, filters: dict[str, str], offset: int,
                     limit: int) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    def verify(self, repair: bool) -> AsyncIterator[dict[str, Any]]:
        """Progress records, then one with the report (`done: true`)."""

    def reindex(self, directory: str) -> AsyncIterator[dict[str, Any]]: ...

    async def backup(self, destination: str) -> dict[str, Any]: ...

    async def access(self, action: str, ae_title: str = "", host: str = "") -> Any:
        """list | add | remove an allowed calling AE."""

    async def peers(self, action: str, ae_title: str = "", host: str = "",
                    port: int = 0) -> Any:
        """list | add | remove a C-MOVE destination."""

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Association events as they happen, until the consumer stops iterating."""

    async def events_ready(self) -> None:
        """Returns once a feed from `events()` gets every engine's events."""
