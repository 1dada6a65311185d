"""Series metadata, the hot path of every viewer: a 300-instance series answers from its
gzipped cache without reading the instances again (how fast is measured by
scripts/bench/bench_dicomweb.py, not here), gzipped when the client accepts it, and a
new instance in the series invalidates the cache."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from pydicom.uid import generate_uid

from support.config import FAST_STORAGE, server_config
from support.instances import bundled_dataset
from support.scu import Scu
from support.server import RunningServer

SERIES_SIZE = 300


@dataclass
class Series:
    server: RunningServer
    study: str
    series: str

    @property
    def url(self) -> str:
        return (f"http://127.0.0.1:{self.server.http_port}/dicom-web/studies/{self.study}"
                f"/series/{self.series}/metadata")


def _instances(study: str, series: str, first: int, count: int) -> list:
    return [bundled_dataset("CT_small.dcm", new_study=False, StudyInstanceUID=study,
                            SeriesInstanceUID=series, InstanceNumber=first + i)
            for i in range(count)]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Series]:
    root = tmp_path_factory.mktemp("dicomweb-metadata")
    srv = RunningServer(server_config(root, {**FAST_STORAGE,
                                             "monitoring.metrics_port": 0})).start()
    try:
        study, series = generate_uid(), generate_uid()
        results = Scu().store_datasets(srv.port, _instances(study, series, 1, SERIES_SIZE))
        assert all(r.ok for r in results)
        yield Series(srv, study, series)
    finally:
        srv.stop()


def _get(url: str, gzip_ok: bool = True) -> requests.Response:
    # `stream` keeps requests from inflating the body: the test sees what was sent.
    rsp = requests.get(url, stream=True, timeout=30, headers={
        "Accept": "application/dicom+json",
        "Accept-Encoding": "gzip" if gzip_ok else "identity"})
    rsp.raw.decode_content = False
    rsp._content = rsp.raw.read()                # noqa: SLF001  (the raw bytes)
    return rsp


def test_series_metadata_is_cached_gzipped(big: Series) -> None:
    cold = _get(big.url)
    assert cold.status_code == 200
    assert cold.headers["Content-Encoding"] == "gzip"
    items = json.loads(gzip.decompress(cold.content))
    assert len(items) == SERIES_SIZE
    assert sorted(i["00200013"]["Value"][0] for i in items) == list(range(1, SERIES_SIZE + 1))
    assert all(i["7FE00010"]["BulkDataURI"].endswith("/bulk/7FE00010") for i in items)
    cached = list((big.server.archive / ".cache" / "dicomweb").glob(f"{big.series}.*.json.gz"))
    assert len(cached) == 1
    plain = _get(big.url, gzip_ok=False)
    assert "Content-Encoding" not in plain.headers
    assert json.loads(plain.content) == items


def test_warm_series_metadata_is_served_from_the_cache(big: Series) -> None:
    cold = _get(big.url)
    # With the series' files moved away, only the cache can answer, and it must answer
    # the same bytes: a warm request reads no instance.
    files = sorted(p for p in big.server.archive.rglob("*.dcm")
                   if not any(part.startswith(".") for part in
                              p.relative_to(big.server.archive).parts))
    assert len(files) >= SERIES_SIZE
    aside = big.server.archive.parent / "aside"
    aside.mkdir()
    moved = [(p, aside / f"{i}.dcm") for i, p in enumerate(files)]
    for src, dst in moved:
        src.rename(dst)
    try:
        warm = _get(big.url)
    finally:
        for src, dst in moved:
            dst.rename(src)
    assert warm.status_code == 200
    assert warm.content == cold.content


def test_a_new_instance_invalidates_the_cache(big: Series) -> None:
    before = json.loads(gzip.decompress(_get(big.url).content))
    (extra,) = _instances(big.study, big.series, SERIES_SIZE + 1, 1)
    assert all(r.ok for r in Scu().store_datasets(big.server.port, [extra]))
    after = json.loads(gzip.decompress(_get(big.url).content))
    assert len(after) == len(before) + 1
    assert str(extra.SOPInstanceUID) in {i["00080018"]["Value"][0] for i in after}
    cached = list((big.server.archive / ".cache" / "dicomweb").glob(f"{big.series}.*.json.gz"))
    assert len(cached) == 1      # the stale version is gone
