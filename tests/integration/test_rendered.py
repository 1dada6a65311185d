"""WADO-RS rendered and thumbnail resources, and WADO-URI's rendered answer, against a
real server holding instances stored by C-STORE: the images decode with Pillow at the
instance's size, follow the window, invert MONOCHROME1, come out of JPEG 2000 and RLE
pixel data, and thumbnails have the sizes asked for."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread

from support.config import FAST_STORAGE, server_config
from support.instances import DicomFiles
from support.scu import SUCCESS, Scu
from support.server import RunningServer

STUDY = "1.2.826.0.1.3680043.8.498.7001"
SERIES = "1.2.826.0.1.3680043.8.498.7001.1"


@dataclass
class Site:
    url: str
    base: str
    files: dict[str, Path]                 # label → the file sent

    def path(self, label: str, tail: str = "rendered") -> str:
        ds = dcmread(self.files[label], stop_before_pixels=True)
        return (f"{self.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/{tail}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("rendered")
    made = DicomFiles(root / "sent")
    files = {
        "ct": made.fresh("CT_small.dcm"),
        "mr": made.fresh("MR_small.dcm"),
        "jp2k": made.fresh("MR_small_jp2klossless.dcm"),
        "rle": made.fresh("MR_small_RLE.dcm"),
        "rgb": made.fresh("SC_rgb_rle.dcm"),
        "multiframe": made.fresh("rtdose.dcm"),
    }
    files["mono1"] = made.fresh("MR_small.dcm", PhotometricInterpretation="MONOCHROME1")
    # One series of five CT slices for the series and study thumbnails.
    for n in (4, 2, 5, 1, 3):
        files[f"slice{n}"] = made.fresh("CT_small.dcm", new_study=False, StudyInstanceUID=STUDY,
                                        SeriesInstanceUID=SERIES, SeriesNumber=1,
                                        InstanceNumber=n, WindowCenter=40 + 100 * n,
                                        WindowWidth=400)
    srv = RunningServer(server_config(root, {**FAST_STORAGE,
                                             "monitoring.metrics_port": 0})).start()
    try:
        results = Scu().store(srv.port, list(files.values()))
        assert [r.status for r in results] == [SUCCESS] * len(files)
        base = f"http://127.0.0.1:{srv.http_port}"
        yield Site(f"{base}/dicom-web", base, files)
    finally:
        srv.stop()


def fetch(url: str, header: str | None = None, **params: str) -> requests.Response:
    """GET with `header` as the Accept header and `params` as the query."""
    return requests.get(url, params=params, timeout=30,
                        headers={"Accept": header} if header else {})


def picture(rsp: requests.Response, media_type: str = "image/jpeg") -> Image.Image:
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["Content-Type"] == media_type
    img = Image.open(io.BytesIO(rsp.content))
    img.load()
    return img


def values(rsp: requests.Response) -> np.ndarray:
    return np.asarray(picture(rsp, "image/png")).astype(int)


def test_rendered_jpeg_decodes_at_the_instance_size(site: Site) -> None:
    img = picture(fetch(site.path("ct"), "image/jpeg"))
    assert img.format == "JPEG" and img.size == (128, 128)
    assert np.asarray(img).std() > 10                       # an image, not a blank
    frame = picture(fetch(site.path("ct", "frames/1/rendered")))
    assert frame.size == (128, 128)
    # A wildcard gets JPEG; PNG when asked, by header or by the accept parameter.
    assert picture(fetch(site.path("ct"), "*/*")).format == "JPEG"
    assert picture(fetch(site.path("ct"), "image/png"), "image/png").format == "PNG"
    assert picture(fetch(site.path("ct"), "text/html", accept="image/png"),
                   "image/png").format == "PNG"


def test_window_from_the_query_changes_pixels(site: Site) -> None:
    default = values(fetch(site.path("ct"), "image/png"))
    narrow = values(fetch(site.path("ct"), "image/png", window="40,80"))
    wide = values(fetch(site.path("ct"), "image/png", window="40,4000,linear"))
    assert not np.array_equal(default, narrow) and not np.array_equal(narrow, wide)
    assert (narrow == 0).mean() > (wide == 0).mean()        # a narrow window clips more


def test_window_stored_in_the_instance_is_used(site: Site) -> None:
    low = values(fetch(site.path("slice1"), "image/png"))    # WindowCenter 140
    high = values(fetch(site.path("slice5"), "image/png"))   # WindowCenter 540
    assert low.mean() > high.mean()


def test_monochrome1_is_inverted(site: Site) -> None:
    normal = values(fetch(site.path("mr"), "image/png", window="600,1200"))
    inverted = values(fetch(site.path("mono1"), "image/png", window="600,1200"))
    assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("label", ["jp2k", "rle"])
def test_jpeg2000_and_rle_stored_instances_render(site: Site, label: str) -> None:
    assert np.array_equal(values(fetch(site.path(label), "image/png")),
                          values(fetch(site.path("mr"), "image/png")))


def test_colour_and_frames(site: Site) -> None:
    assert picture(fetch(site.path("rgb"))).mode == "RGB"
    frames = int(dcmread(site.files["multiframe"], stop_before_pixels=True).NumberOfFrames)
    first = values(fetch(site.path("multiframe", "frames/1/rendered"), "image/png"))
    last = values(fetch(site.path("multiframe", f"frames/{frames}/rendered"), "image/png"))
    assert not np.array_equal(first, last)
    beyond = fetch(site.path("multiframe", f"frames/{frames + 1}/rendered"))
    assert beyond.status_code == 404 and "frame" in beyond.json()["error"]


def test_thumbnail_sizes(site: Site) -> None:
    assert picture(fetch(site.path("ct", "thumbnail"))).size == (128, 128)
    assert picture(fetch(site.path("ct", "thumbnail"), viewport="64,64")).size == (64, 64)
    assert picture(fetch(site.path("rgb", "frames/1/thumbnail"),
                         viewport="50,20")).size == (20, 20)
    # OHIF asks for thumbnails with ?accept=image/jpeg.
    series = f"{site.url}/studies/{STUDY}/series/{SERIES}/thumbnail"
    study = f"{site.url}/studies/{STUDY}/thumbnail"
    middle = picture(fetch(site.path("slice3", "thumbnail"), accept="image/jpeg"))
    for url in (series, study):
        img = picture(fetch(url, accept="image/jpeg"))
        assert img.size == (128, 128)
        assert np.array_equal(np.asarray(img), np.asarray(middle)), url


def test_refusals(site: Site) -> None:
    assert fetch(site.path("ct"), "application/dicom").status_code == 406
    for params in ({"window": "40"}, {"window": "40,0"}, {"viewport": "0,10"},
                   {"quality": "101"}):
        rsp = fetch(site.path("ct"), **params)
        assert rsp.status_code == 400, params
        assert next(iter(params)) in rsp.json()["error"]
    assert fetch(site.path("ct", "frames/1,2/rendered")).status_code == 400
    assert fetch(site.path("ct", "frames/0/rendered")).status_code == 400
    bad = fetch(f"{site.url}/studies/1.2.3/series/1..2/instances/3/rendered")
    assert bad.status_code == 400
    gone = fetch(f"{site.url}/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered")
    assert gone.status_code == 404


def test_wado_uri_renders_jpeg_and_png(site: Site) -> None:
    ds = dcmread(site.files["multiframe"], stop_before_pixels=True)
    query = {"requestType": "WADO", "studyUID": str(ds.StudyInstanceUID),
             "seriesUID": str(ds.SeriesInstanceUID), "objectUID": str(ds.SOPInstanceUID)}
    img = picture(fetch(f"{site.base}/wado", **query))
    assert img.size == (ds.Columns, ds.Rows)
    small = picture(fetch(f"{site.base}/wado", **query, contentType="image/png", rows="5",
                          frameNumber="2"), "image/png")
    assert small.size[1] == 5
    rsp = fetch(f"{site.base}/wado", **query, windowCenter="100")
    assert rsp.status_code == 400 and "windowWidth" in rsp.json()["error"]
