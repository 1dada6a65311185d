"""Bad DICOMweb input gets a clear 4xx with a JSON reason, nothing is stored, and the
server goes on serving: malformed multipart, parts that are not DICOM, wrong media
types, a 2 GB body that never arrives, path traversal in UIDs, unknown attributes."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from pydicom.dataset import Dataset

from support.archive import incoming_files, index_counts
from support.config import FAST_STORAGE, server_config
from support.instances import bundled_dataset
from support.server import RunningServer

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=BOUNDARY'
READ_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("dicomweb-bad")
    server = RunningServer(server_config(root, {
        **FAST_STORAGE, "monitoring.metrics_port": 0,
        "dicomweb.read_timeout": READ_TIMEOUT,
        "storage.accepted_sop_classes": ["CT", "MR"]})).start()
    try:
        yield server
    finally:
        server.stop()


def _url(srv: RunningServer) -> str:
    return f"http://127.0.0.1:{srv.http_port}/dicom-web"


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _body(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for content_type, data in parts:
        out += f"--BOUNDARY\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--BOUNDARY--\r\n"


def _nothing_stored(srv: RunningServer) -> None:
    assert index_counts(srv.db)["instances"] == 0
    assert incoming_files(srv.archive) == []


def _still_serving(srv: RunningServer) -> None:
    assert requests.get(f"{_url(srv)}/studies", timeout=10).status_code == 200


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"this is not a multipart body at all", 400, "malformed multipart"),
    (b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\nabc", 400, ""),
    (_body(("application/dicom", b"hello, not DICOM")), 400, "not a DICOM Part-10 file"),
    (_body(("application/dicom", b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0\xff\xff\0\0")),
     400, ""),
    (_body(("text/plain", b"hello")), 400, "not application/dicom"),
    (b"--BOUNDARY--\r\n", 400, "no parts"),
], ids=["garbage", "truncated", "text-as-dicom", "broken-meta", "text-part", "empty"])
def test_bad_multipart_is_400_and_stores_nothing(srv: RunningServer, body: bytes, status: int,
                                                 reason: str) -> None:
    rsp = requests.post(f"{_url(srv)}/studies", data=body,
                        headers={"Content-Type": STOW_TYPE}, timeout=30)
    assert rsp.status_code == status, rsp.text
    text = rsp.text if "error" not in rsp.text else rsp.json()["error"]
    assert reason.lower() in (text + rsp.headers.get("Warning", "")).lower()
    _nothing_stored(srv)
    _still_serving(srv)


@pytest.mark.parametrize("content_type", [
    "application/dicom", "application/json", 'multipart/related; type="application/dicom+json"'
    "; boundary=BOUNDARY", "multipart/mixed; boundary=BOUNDARY", ""])
def test_wrong_content_type_is_415(srv: RunningServer, content_type: str) -> None:
    data = _body(("application/dicom", _part10(bundled_dataset("CT_small.dcm"))))
    headers = {"Content-Type": content_type} if content_type else {}
    rsp = requests.post(f"{_url(srv)}/studies", data=data, headers=headers, timeout=30)
    assert rsp.status_code == 415, rsp.text
    assert "multipart/related" in rsp.json()["error"]
    _nothing_stored(srv)


def test_unaccepted_sop_class_and_other_study_are_409(srv: RunningServer) -> None:
    sc = bundled_dataset("JPEG2000.dcm")          # Secondary Capture: not CT or MR
    rsp = requests.post(f"{_url(srv)}/studies", data=_body(("application/dicom", _part10(sc))),
                        headers={"Content-Type": STOW_TYPE}, timeout=30)
    assert rsp.status_code == 409
    assert rsp.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]
    ct = bundled_dataset("CT_small.dcm")
    rsp = requests.post(f"{_url(srv)}/studies/1.2.3.4", timeout=30,
                        data=_body(("application/dicom", _part10(ct))),
                        headers={"Content-Type": STOW_TYPE})
    assert rsp.status_code == 409
    (failed,) = rsp.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC409]
    assert failed["00081155"]["Value"] == [str(ct.SOPInstanceUID)]
    _nothing_stored(srv)


def test_too_large_content_length_is_413(srv: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: {STOW_TYPE}\r\nContent-Length: {5 << 30}\r\n\r\n"
                     .encode())
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    _nothing_stored(srv)


@pytest.mark.parametrize("sent", [b"", b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n"
                                  + b"\0" * 128 + b"DICM"], ids=["no-body", "part-begun"])
def test_body_that_never_arrives_is_408(srv: RunningServer, sent: bytes) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: {STOW_TYPE}\r\nContent-Length: {2 << 30}\r\n\r\n"
                     .encode() + sent)
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 408"), head
    assert time.monotonic() - started < READ_TIMEOUT + 10
    assert '"error"' in head
    _nothing_stored(srv)
    _still_serving(srv)


@pytest.mark.parametrize("path", [
    "/studies/..%2F..%2Fetc/series",
    "/studies/1.2.3/series/..%2F..%2F..%2Fpasswd/metadata",
    "/studies/1.2.3/series/1.2.4/instances/1.2.5;rm/frames/1",
    "/studies/1.2.3/series/1.2.4/instances/%2E%2E/bulk/7FE00010",
    "/studies/" + "1." * 40 + "1",
    "/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/0",
    "/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1;2",
    "/studies/1.2.3/series/1.2.4/instances/1.2.5/bulk/../../x",
    "/studies?StudyInstanceUID=1.2.3%27%20OR%201=1",
    "/studies?NoSuchAttribute=1",
    "/studies?limit=-1",
    "/studies?limit=ten",
])
def test_bad_urls_are_400_or_404_with_a_reason(srv: RunningServer, path: str) -> None:
    rsp = requests.get(_url(srv) + path, timeout=10)
    assert rsp.status_code in (400, 404), (path, rsp.status_code, rsp.text)
    assert rsp.headers["Content-Type"].startswith("application/json")
    assert rsp.json()["error"]
    _still_serving(srv)


@pytest.mark.parametrize(("query", "reason"), [
    ("StudyDate=2020-01-01", "StudyDate: '2020-01-01' is not a DA value or range"),
    ("StudyTime=9", "StudyTime: '9' is not a TM value or range"),
    ("PatientBirthDate=1970*", "PatientBirthDate: '1970*' is not a DA value or range"),
])
def test_malformed_date_or_time_is_400_naming_the_key(srv: RunningServer, query: str,
                                                       reason: str) -> None:
    # PS3.18 8.3.4: a query parameter with an invalid value is a 400; answered "no
    # match", a typo would look like an empty archive.
    rsp = requests.get(f"{_url(srv)}/studies?{query}", timeout=10)
    assert rsp.status_code == 400, rsp.text
    assert rsp.json()["error"] == reason


def test_unknown_instance_is_404(srv: RunningServer) -> None:
    rsp = requests.get(f"{_url(srv)}/studies/1.2.3/series/1.2.4/instances/1.2.5", timeout=10)
    assert rsp.status_code == 404 and "1.2.5" in rsp.json()["error"]
    rsp = requests.get(f"{_url(srv)}/studies/1.2.3/metadata", timeout=10)
    assert rsp.status_code == 404
