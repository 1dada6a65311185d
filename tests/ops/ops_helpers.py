"""Helpers of the operations tests: an HTTP client for the server's HTTP side (aiohttp's
own client, against the real server), Prometheus text parsing, a held association."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from pacs_testing import SCU_AE, SERVER_AE
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

TOKEN = "test-token-0123456789abcdef"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


async def http_get(base: str, path: str, token: str | None = None) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one GET."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(base + path, headers=headers) as rsp:
            if rsp.content_type == "application/json":
                return rsp.status, await rsp.json()
            return rsp.status, await rsp.text()


async def http_call(base: str, method: str, path: str, token: str | None = TOKEN,
                    body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, headers=headers, json=body) as rsp:
            if rsp.content_type == "application/json":
                return rsp.status, await rsp.json()
            return rsp.status, await rsp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",")
                     if "=" in part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0


@contextmanager
def held_association(port: int, calling: str = SCU_AE, called: str = SERVER_AE,
                     contexts: tuple[str, ...] = (VERIFICATION,)) -> Iterator[Association]:
    """An established association, released on exit (blocking: use from a thread or
    hold it while the loop runs other work via asyncio.to_thread)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cx in contexts:
        ae.add_requested_context(cx, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def associate_result(port: int, calling: str = SCU_AE) -> tuple[bool, tuple[int, ...]]:
    """Try to associate; (established, (result, source, diagnostic) of a rejection)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE)
    if assoc.is_established:
        assoc.release()
        return True, ()
    rj = assoc.acceptor.primitive
    if rj is None or not assoc.is_rejected:
        return False, ()
    return False, (rj.result, rj.result_source, rj.diagnostic)


def in_thread(fn: Any, *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t
