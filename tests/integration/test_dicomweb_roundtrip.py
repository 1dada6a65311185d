"""DICOMweb round trips with dicomweb-client (a client written elsewhere) against the
real server: STOW-RS of CT, MR and JPEG 2000 files, QIDO-RS at every level, WADO-RS of
instances, metadata with working BulkDataURIs, frames as stored and decoded."""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from support.archive import indexed_path
from support.config import FAST_STORAGE, server_config
from support.instances import bundled_dataset
from support.server import RunningServer

FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm")


@dataclass
class Site:
    server: RunningServer
    url: str
    client: DICOMwebClient
    sent: dict[str, Dataset]           # file name → dataset as sent

    def uids(self, name: str) -> tuple[str, str, str]:
        ds = self.sent[name]
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dicomweb")
    srv = RunningServer(server_config(root, {**FAST_STORAGE,
                                             "monitoring.metrics_port": 0})).start()
    try:
        url = f"http://127.0.0.1:{srv.http_port}/dicom-web"
        # Two MR files of pydicom share their UIDs: each gets its own study here.
        sent = {name: bundled_dataset(name) for name in FILES}
        sent["MR_small.dcm"].PatientName = "Percent^Value"
        yield Site(srv, url, DICOMwebClient(url=url), sent)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def stored(site: Site) -> Dataset:
    return site.client.store_instances(list(site.sent.values()))


def _multipart(rsp: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    head = f"Content-Type: {rsp.headers['Content-Type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + rsp.content)
    return [(str(part.get("Content-Type")).replace('"', ""), part.get_payload(decode=True))
            for part in msg.iter_parts()]


def test_stow_stores_every_file(site: Site, stored: Dataset) -> None:
    refs = {str(item.ReferencedSOPInstanceUID) for item in stored.ReferencedSOPSequence}
    assert refs == {str(ds.SOPInstanceUID) for ds in site.sent.values()}
    assert "FailedSOPSequence" not in stored
    for item in stored.ReferencedSOPSequence:
        # dicomweb-client sends `Host: 127.0.0.1` without the port; URLs follow Host.
        assert "/dicom-web/studies/" in item.RetrieveURL
        assert item.RetrieveURL.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")


def test_stow_again_is_a_conflict_with_failure_reasons(site: Site, stored: Dataset) -> None:
    ds = site.sent["CT_small.dcm"]
    rsp = requests.post(f"{site.url}/studies", data=_stow_body([ds]),
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                 "boundary=XyZ"})
    assert rsp.status_code == 409          # duplicate_policy reject: nothing stored
    body = rsp.json()
    (failed,) = body["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [str(ds.SOPInstanceUID)]
    assert failed["00081197"]["Value"] == [0x0111]
    assert "already stored" in rsp.headers["Warning"]


def test_stow_partly_stored_is_202(site: Site, stored: Dataset) -> None:
    fresh = bundled_dataset("CT_small.dcm", PatientID="PARTIAL", StudyDate="20200101")
    body = _stow_body([fresh]).replace(b"--XyZ--\r\n", b"--XyZ\r\nContent-Type: "
                                       b"application/dicom\r\n\r\nnot DICOM\r\n--XyZ--\r\n")
    rsp = requests.post(f"{site.url}/studies", data=body,
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                 "boundary=XyZ"})
    assert rsp.status_code == 202
    payload = rsp.json()
    (ok,) = payload["00081199"]["Value"]
    assert ok["00081155"]["Value"] == [str(fresh.SOPInstanceUID)]
    (failed,) = payload["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert payload["00081190"]["Value"][0].endswith(f"/studies/{fresh.StudyInstanceUID}")
    assert site.client.search_for_instances(str(fresh.StudyInstanceUID))


def _stow_body(datasets: list[Dataset], boundary: str = "XyZ") -> bytes:
    from io import BytesIO

    out = b""
    for ds in datasets:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + buf.getvalue() + b"\r\n")
    return out + f"--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------- QIDO-RS

def test_qido_studies_all_and_by_hex_tag(site: Site, stored: Dataset) -> None:
    studies = site.client.search_for_studies(search_filters={"PatientName": "*"})
    assert len(studies) >= len(FILES)
    study, _, _ = site.uids("CT_small.dcm")
    found = site.client.search_for_studies(search_filters={"00100020": "1CT1"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    first = found[0]
    # PS3.18 Table 6.7.1-2 defaults, with counts and a RetrieveURL of this server.
    for tag in ("00080020", "00080061", "00100010", "00201206", "00201208", "00081190"):
        assert tag in first, tag
    assert first["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")


def test_qido_percent_encoded_wildcards_ranges_and_uid_lists(site: Site,
                                                             stored: Dataset) -> None:
    rsp = requests.get(f"{site.url}/studies?PatientName=Percent%5E%2A")
    assert rsp.status_code == 200
    names = [s["00100010"]["Value"][0]["Alphabetic"] for s in rsp.json()]
    assert names == ["Percent^Value"]
    ct, mr = site.uids("CT_small.dcm")[0], site.uids("MR_small.dcm")[0]
    rsp = requests.get(f"{site.url}/studies?StudyInstanceUID={ct}%2C{mr}")
    assert sorted(s["0020000D"]["Value"][0] for s in rsp.json()) == sorted([ct, mr])
    in_range = site.client.search_for_studies(search_filters={"StudyDate": "20040101-20040201"})
    assert [s["0020000D"]["Value"][0] for s in in_range] == [ct]
    fuzzy = site.client.search_for_studies(search_filters={"PatientName": "percent*"},
                                           fuzzymatching=True)
    assert len(fuzzy) == 1


def test_qido_paging(site: Site, stored: Dataset) -> None:
    every = [s["0020000D"]["Value"][0] for s in site.client.search_for_studies()]
    pages = []
    for offset in range(0, len(every), 3):
        rsp = requests.get(f"{site.url}/studies", params={"limit": 3, "offset": offset})
        pages += [s["0020000D"]["Value"][0] for s in rsp.json()]
        assert ("Warning" in rsp.headers) == (offset + 3 < len(every))
    assert pages == every
    rsp = requests.get(f"{site.url}/studies", params={"offset": 100})
    assert rsp.status_code == 200 and rsp.json() == []


def test_qido_series_and_instances_at_every_level(site: Site, stored: Dataset) -> None:
    study, series, sop = site.uids("MR_small_jp2klossless.dcm")
    # OHIF's form: a comma list, percent-encoded.
    rsp = requests.get(f"{site.url}/studies/{study}/series?includefield="
                       "00081030%2C00080060%2CBodyPartExamined")
    assert rsp.status_code == 200
    (found,) = rsp.json()
    assert found["0020000E"]["Value"] == [series]
    assert found["00080060"]["Value"] == ["MR"]
    assert "00081030" in found and "00180015" in found
    assert found["00081190"]["Value"][0].endswith(f"/studies/{study}/series/{series}")
    everywhere = site.client.search_for_series(search_filters={"Modality": "MR"})
    assert len(everywhere) == 2
    for instances in (
            site.client.search_for_instances(study, series),
            site.client.search_for_instances(study),
            site.client.search_for_instances(search_filters={"SOPInstanceUID": sop})):
        assert [i["00080018"]["Value"][0] for i in instances] == [sop]
        assert instances[0]["00280010"]["Value"] == [64]        # Rows, Table 6.7.1-2b
    one = site.client.search_for_instances(study, series, fields=["all"])
    assert one[0]["00200013"]["Value"] == [int(site.sent["MR_small_jp2klossless.dcm"]
                                                .InstanceNumber)]
    assert site.client.search_for_series(search_filters={"Modality": "XA"}) == []


# ----------------------------------------------------------------------------- WADO-RS

def test_wado_instance_as_stored_is_the_stored_file(site: Site, stored: Dataset) -> None:
    for name in FILES:
        study, series, sop = site.uids(name)
        rsp = requests.get(f"{site.url}/studies/{study}/series/{series}/instances/{sop}",
                           headers={"Accept": 'multipart/related; type="application/dicom"; '
                                              "transfer-syntax=*"})
        assert rsp.status_code == 200
        ((content_type, body),) = _multipart(rsp)
        on_disk = indexed_path(site.server.archive, site.server.db, sop)
        assert on_disk is not None and body == on_disk.read_bytes()
        assert f"transfer-syntax={site.sent[name].file_meta.TransferSyntaxUID}" in content_type


def test_wado_with_dicomweb_client_and_default_syntax(site: Site, stored: Dataset) -> None:
    study, series, sop = site.uids("MR_small_jp2klossless.dcm")
    sent = site.sent["MR_small_jp2klossless.dcm"]
    as_stored = site.client.retrieve_instance(study, series, sop)    # its default: `*`
    assert as_stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    ds = site.client.retrieve_instance(study, series, sop, media_types=("application/dicom",))
    # No transfer-syntax asked: Explicit VR Little Endian (PS3.18 8.7.3.4), decoded.
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.pixel_array == sent.pixel_array).all()
    series_all = site.client.retrieve_series(study, series,
                                             media_types=(("application/dicom", "*"),))
    assert [str(d.SOPInstanceUID) for d in series_all] == [sop]
    whole = site.client.retrieve_study(*site.uids("CT_small.dcm")[:1])
    assert len(whole) == 1 and whole[0].PatientID == "1CT1"


def test_series_metadata_bulk_data_uris_resolve(site: Site, stored: Dataset) -> None:
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm"):
        study, series, sop = site.uids(name)
        url = f"{site.url}/studies/{study}/series/{series}/metadata"
        (item,) = site.client.retrieve_series_metadata(study, series)
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri == f"instances/{sop}/bulk/7FE00010"      # relative (RFC 3986 5.2)
        assert "InlineBinary" not in item["7FE00010"]
        assert item["00080018"]["Value"] == [sop]
        parts = site.client.retrieve_bulkdata(urljoin(url, uri),
                                              media_types=(("application/octet-stream", "*"),))
        sent = site.sent[name]
        if sent.file_meta.TransferSyntaxUID.is_compressed:
            assert parts == list(generate_frames(sent.PixelData, number_of_frames=1))
        else:
            assert parts == [sent.PixelData]
    study, series, sop = site.uids("CT_small.dcm")
    one = site.client.retrieve_instance_metadata(study, series, sop)    # [0] of the array
    assert one["7FE00010"]["BulkDataURI"] == "bulk/7FE00010"
    study_level = site.client.retrieve_study_metadata(study)
    assert study_level[0]["7FE00010"]["BulkDataURI"] == \
        f"series/{series}/instances/{sop}/bulk/7FE00010"


def test_frames_as_stored_and_uncompressed(site: Site, stored: Dataset) -> None:
    for name in ("MR_small_jp2klossless.dcm", "JPEG2000.dcm", "CT_small.dcm"):
        study, series, sop = site.uids(name)
        sent = site.sent[name]
        as_stored = site.client.retrieve_instance_frames(
            study, series, sop, [1], media_types=(("application/octet-stream", "*"),))
        if sent.file_meta.TransferSyntaxUID.is_compressed:
            assert as_stored == [next(generate_frames(sent.PixelData, number_of_frames=1))]
        else:
            assert as_stored == [sent.PixelData]
        raw = site.client.retrieve_instance_frames(
            study, series, sop, [1],
            media_types=(("application/octet-stream", ExplicitVRLittleEndian),))
        assert raw == [sent.pixel_array.tobytes()]


def test_frames_part_headers_and_no_preamble(site: Site, stored: Dataset) -> None:
    study, series, sop = site.uids("MR_small_jp2klossless.dcm")
    rsp = requests.get(f"{site.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                       headers={"Accept": "multipart/related; type=application/octet-stream; "
                                          "transfer-syntax=*"})
    assert rsp.status_code == 200
    assert rsp.content.startswith(b"--")
    ((content_type, _),) = _multipart(rsp)
    assert content_type == f"application/octet-stream; transfer-syntax={JPEG2000Lossless}"
    jp2 = requests.get(f"{site.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                       headers={"Accept": 'multipart/related; type="image/jp2"'})
    ((content_type, frame),) = _multipart(jp2)
    assert content_type == f"image/jp2; transfer-syntax={JPEG2000Lossless}"
    assert frame == _multipart(rsp)[0][1]
    jls = requests.get(f"{site.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                       headers={"Accept": 'multipart/related; type="image/jls"'})
    assert jls.status_code == 406 and "image/jp2" in jls.json()["error"]
    bad = requests.get(f"{site.url}/studies/{study}/series/{series}/instances/{sop}/frames/2")
    assert bad.status_code == 404 and "frame 2" in bad.json()["error"]


def test_accept_negotiation(site: Site, stored: Dataset) -> None:
    study, series, sop = site.uids("CT_small.dcm")
    both = requests.get(f"{site.url}/studies/{study}/series/{series}/metadata",
                        headers={"Accept": 'application/dicom+json, multipart/related; '
                                           'type="application/dicom"'})
    assert both.status_code == 200 and both.headers["Content-Type"].startswith(
        "application/dicom+json")
    refused = requests.get(f"{site.url}/studies", headers={"Accept": "text/html"})
    assert refused.status_code == 406 and "application/dicom+json" in refused.json()["error"]
    wrong = requests.get(f"{site.url}/studies/{study}", headers={"Accept": "image/png"})
    assert wrong.status_code == 406


def test_wado_uri(site: Site, stored: Dataset) -> None:
    study, series, sop = site.uids("CT_small.dcm")
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    base = site.url.rsplit("/dicom-web", 1)[0]
    rsp = requests.get(f"{base}/wado?{query}&contentType=application%2Fdicom")
    assert rsp.status_code == 200 and rsp.headers["Content-Type"] == "application/dicom"
    on_disk = indexed_path(site.server.archive, site.server.db, sop)
    assert on_disk is not None and rsp.content == on_disk.read_bytes()
    jpeg = requests.get(f"{base}/wado?{query}")     # contentType defaults to image/jpeg
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    other = requests.get(f"{base}/wado?{query}&contentType=text%2Fhtml")
    assert other.status_code == 406 and "image/jpeg" in other.json()["error"]
