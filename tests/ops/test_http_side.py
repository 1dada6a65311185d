"""The HTTP side against a real in-process server: /metrics, /status, /healthz, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pacs_server.config import Config
from support.http import TOKEN, base_url, http_call, http_get, metric
from support.instances import DicomFiles
from support.postgres import PostgresCluster
from support.scu import PENDING, SUCCESS, Scu, identifier
from support.server import RunningServer


def c_find_study(port: int) -> int:
    """A Study Root C-FIND for every study; returns the number of matches."""
    responses = Scu().find(port, identifier("STUDY", StudyInstanceUID=""))
    return sum(1 for r in responses if r.status == PENDING)


async def test_metrics_change_after_stores_and_queries(ops_server: RunningServer,
                                                       dicom_files: DicomFiles) -> None:
    base = base_url(ops_server)
    status, before = await http_get(base, "/metrics")
    assert status == 200
    assert metric(before, "pacs_index_entities", level="instances") == 0
    sent = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("MR_small.dcm")]
    results = await Scu().astore(ops_server.port, sent)
    assert [r.status for r in results] == [SUCCESS, SUCCESS]
    assert await asyncio.to_thread(c_find_study, ops_server.port) == 2
    _, after = await http_get(base, "/metrics")
    assert metric(after, "pacs_dimse_requests_total", service="C-STORE", status="0x0000") == 2
    assert metric(after, "pacs_dimse_requests_total", service="C-FIND", status="0x0000") == 1
    assert metric(after, "pacs_dimse_seconds_count", operation="C-STORE") == 2
    assert metric(after, "pacs_dimse_seconds_count", operation="C-FIND") == 1
    assert metric(after, "pacs_index_entities", level="instances") == 2
    assert metric(after, "pacs_index_entities", level="studies") == 2
    assert metric(after, "pacs_archive_bytes") > 0
    assert metric(after, "pacs_archive_free_bytes") > 0
    assert metric(after, "pacs_store_bytes_total") == metric(after, "pacs_archive_bytes")
    assert metric(after, "pacs_associations_total", outcome="accepted") >= 2
    assert metric(after, "process_resident_memory_bytes") > 0


async def test_status_lists_a_live_association(ops_server: RunningServer) -> None:
    base = base_url(ops_server)
    held = asyncio.Event()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold() -> None:
        with Scu("MODALITY1").associate(ops_server.port) as assoc:
            assoc.send_c_echo()
            loop.call_soon_threadsafe(held.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(30)

    task = asyncio.create_task(asyncio.to_thread(hold))
    await asyncio.wait_for(held.wait(), 30)
    status, body = await http_get(base, "/status")
    assert status == 200
    assert body["ae_title"] == "PACS"
    assert body["ports"] == {"dicom": ops_server.port, "dicom_tls": None,
                             "http": ops_server.http_port}
    assert body["state"] == "accepting" and body["paused"] is False
    (live,) = body["associations"]
    assert live["calling_ae"] == "MODALITY1"
    assert live["called_ae"] == "PACS"
    assert live["peer"].startswith("127.0.0.1:")
    assert live["operations"] == {"C-ECHO": 1}
    assert live["last_operation"] == "C-ECHO"
    assert live["since"]
    assert body["totals"]["accepted"] >= 1
    assert body["storage"]["instances"] == 0 and body["storage"]["free_bytes"] > 0
    assert body["database"] == {"healthy": True}
    release.set()
    await task
    _, after = await http_get(base, "/status")
    assert after["associations"] == []


async def test_healthz_ok_and_paused_is_healthy(ops_server: RunningServer) -> None:
    base = base_url(ops_server)
    assert await http_get(base, "/healthz") == (200, "ok\n")
    assert (await http_call(base, "POST", "/api/pause"))[0] == 200
    assert await http_get(base, "/healthz") == (200, "ok\n")


async def test_healthz_503_below_the_storage_reserve(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    """A reserve larger than any disk: C-STORE is refused (0xA700) and /healthz says why."""
    app = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "storage.min_free_bytes": 1 << 60}))
    status, reason = await http_get(base_url(app), "/healthz")
    assert status == 503
    assert reason.startswith("archive below storage.min_free_bytes: ")
    assert reason.count("\n") == 1


async def test_healthz_503_when_the_index_is_unavailable(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config],
        postgres_url: str, postgres_cluster: PostgresCluster) -> None:
    app = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "database.url": postgres_url}))
    base = base_url(app)
    assert await http_get(base, "/healthz") == (200, "ok\n")
    postgres_cluster.halt()
    try:
        status, reason = await http_get(base, "/healthz")
        assert status == 503
        assert reason.startswith("index unavailable: ") and reason.count("\n") == 1
        _, body = await http_get(base, "/status")
        assert body["database"]["healthy"] is False
    finally:
        postgres_cluster.start()
    assert await http_get(base, "/healthz") == (200, "ok\n")


async def test_api_refuses_without_or_with_a_wrong_token(ops_server: RunningServer) -> None:
    base = base_url(ops_server)
    status, body = await http_get(base, "/api/status")
    assert status == 401
    assert body == {"error": "missing bearer token (Authorization: Bearer <token>)",
                    "status": 401}
    status, body = await http_get(base, "/api/status", token="wrong-token-0123456789")
    assert (status, body["error"]) == (401, "wrong bearer token")
    status, body = await http_get(base, "/api/status", token=TOKEN)
    assert status == 200 and body["ae_title"] == "PACS"


async def test_api_is_off_without_a_configured_token(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg({"monitoring.metrics_port": 0}))
    status, body = await http_get(base_url(app), "/api/status", token="anything-at-all-1234")
    assert status == 401
    assert body["error"] == "the admin API is off: set admin.token or admin.token_file"
    assert (await http_get(base_url(app), "/status"))[0] == 200


async def test_bad_requests_get_a_json_reason(ops_server: RunningServer) -> None:
    base = base_url(ops_server)
    assert await http_get(base, "/nowhere") == (404, {"error": "Not Found", "status": 404})
    status, body = await http_get(base, "/api/browse/studies?limit=abc", token=TOKEN)
    assert (status, body["error"]) == (400, "limit: expected an integer, got 'abc'")
    status, body = await http_get(base, "/api/browse/studies?date=yesterday", token=TOKEN)
    assert status == 400 and body["error"].startswith("date: YYYYMMDD")
    status, body = await http_get(base, "/api/browse/nothing", token=TOKEN)
    assert status == 404
    status, body = await http_get(base, "/api/associations/99", token=TOKEN)
    assert (status, body["error"]) == (404, "no live association 99")
    status, body = await http_call(base, "POST", "/api/ae", body={"ae_title": "BAD\\AE"})
    assert status == 400 and "not a valid AE title" in body["error"]
    status, body = await http_call(base, "POST", "/api/ae",
                                   body={"ae_title": "CT1", "host": "example.org"})
    assert (status, body["error"]) == (400, "host: 'example.org' is not an IP address")
    status, body = await http_call(base, "POST", "/api/peers",
                                   body={"ae_title": "V", "host": "127.0.0.1", "port": 0})
    assert (status, body["error"]) == (400, "port: expected an integer 1-65535")
    status, body = await http_call(base, "POST", "/api/backup", body={"destination": "x.db"})
    assert status == 400 and "must be an absolute path" in body["error"]
    status, body = await http_call(base, "PUT", "/api/pause")
    assert status == 405 and body["status"] == 405


async def test_monitoring_disabled_means_no_http_side(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg({"monitoring.metrics_port": 0,
                                       "monitoring.enabled": False}))
    assert app.http_port is None
