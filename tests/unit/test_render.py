"""services/render.py on pydicom's bundled files: what comes out decodes with Pillow, has
the instance's size, follows the window, inverts MONOCHROME1, and is the same image
whatever lossless syntax the pixels were stored in."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from pacs_server.errors import InvalidRequest, NotFound
from pacs_server.services.render import (
    RenderOptions,
    Window,
    parse_viewport,
    parse_window,
    render,
    representative,
)
from support.instances import DicomFiles, bundled_file


def image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(image(data)).astype(int)


def test_jpeg_of_a_ct_decodes_at_the_instance_size() -> None:
    path = bundled_file("CT_small.dcm")
    ds = dcmread(path)
    picture = image(render(path, RenderOptions()))
    assert picture.format == "JPEG" and picture.mode == "L"
    assert picture.size == (ds.Columns, ds.Rows)
    values = np.asarray(picture)
    assert values.min() < 50 and values.max() > 200       # not blank, full range used


def test_png_is_lossless_and_window_changes_pixels() -> None:
    path = bundled_file("CT_small.dcm")
    auto = pixels(render(path, RenderOptions(media_type="image/png")))
    soft = pixels(render(path, RenderOptions(media_type="image/png",
                                             window=Window(40, 400))))
    bone = pixels(render(path, RenderOptions(media_type="image/png",
                                             window=Window(300, 1500))))
    assert image(render(path, RenderOptions(media_type="image/png"))).format == "PNG"
    assert not np.array_equal(auto, soft) and not np.array_equal(soft, bone)
    # PS3.3 C.11.2.1.2: values below center - width/2 are black, above it white.
    ds = dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert (soft[hu <= 40 - 200] == 0).all() and (soft[hu > 40 + 200] == 255).all()


def test_monochrome1_is_inverted(dicom_files: DicomFiles) -> None:
    ds = dcmread(bundled_file("MR_small.dcm"))
    normal = pixels(render(bundled_file("MR_small.dcm"),
                           RenderOptions(media_type="image/png", window=Window(600, 1200))))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = dicom_files.save(ds, stem="mono1")
    flipped = pixels(render(inverted, RenderOptions(media_type="image/png",
                                                    window=Window(600, 1200))))
    assert np.array_equal(flipped, 255 - normal)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_instances_render_like_the_uncompressed_one(name: str) -> None:
    opts = RenderOptions(media_type="image/png")
    assert np.array_equal(pixels(render(bundled_file(name), opts)),
                          pixels(render(bundled_file("MR_small.dcm"), opts)))


def test_colour_and_palette_render_as_rgb() -> None:
    for name in ("SC_rgb_rle.dcm", "examples_ybr_color.dcm", "examples_palette.dcm"):
        picture = image(render(bundled_file(name), RenderOptions(media_type="image/png")))
        ds = dcmread(bundled_file(name), stop_before_pixels=True)
        assert picture.mode == "RGB" and picture.size == (ds.Columns, ds.Rows), name
        assert np.asarray(picture).std() > 0, name


def test_frames_of_a_multiframe_instance() -> None:
    path = bundled_file("rtdose.dcm")
    frames = int(dcmread(path, stop_before_pixels=True).NumberOfFrames)
    first = pixels(render(path, RenderOptions(media_type="image/png", frame=1)))
    last = pixels(render(path, RenderOptions(media_type="image/png", frame=frames)))
    assert not np.array_equal(first, last)
    with pytest.raises(NotFound, match=f"has {frames} frame"):
        render(path, RenderOptions(frame=frames + 1))


@pytest.mark.parametrize(("viewport", "size"), [((64, 64), (64, 64)), ((64, 32), (32, 32)),
                                                ((1000, 1000), (128, 128))])
def test_viewport_fits_keeping_the_aspect_and_never_enlarges(
        viewport: tuple[int, int], size: tuple[int, int]) -> None:
    data = render(bundled_file("CT_small.dcm"), RenderOptions(viewport=viewport))
    assert image(data).size == size


def test_no_pixel_data_is_not_found() -> None:
    with pytest.raises(NotFound, match="no pixel data"):
        render(bundled_file("rtplan.dcm"), RenderOptions())


def test_query_parameters_are_checked() -> None:
    assert parse_window("40,400") == Window(40.0, 400.0, "linear")
    assert parse_window("-600,1500,LINEAR-EXACT") == Window(-600.0, 1500.0, "linear_exact")
    assert parse_window("0,1,sigmoid").function == "sigmoid"
    assert parse_viewport("256,128") == (256, 128)
    for bad in ("40", "a,b", "40,0", "40,-1", "40,400,cubic", "nan,4", "1,2,3,4"):
        with pytest.raises(InvalidRequest, match="window"):
            parse_window(bad)
    for bad in ("0,10", "10", "10,10,0,0,5,5", "x,y", "99999,10"):
        with pytest.raises(InvalidRequest, match="viewport"):
            parse_viewport(bad)


def test_representative_is_the_middle_instance_of_the_first_series(
        dicom_files: DicomFiles, tmp_path: Path) -> None:
    series_uid = "1.2.3.4.5"
    made = {n: dicom_files.fresh("CT_small.dcm", new_study=False, InstanceNumber=n,
                                 SeriesNumber=2, SeriesInstanceUID=series_uid)
            for n in (5, 1, 3, 2, 4)}
    other = dicom_files.fresh("CT_small.dcm", new_study=False, InstanceNumber=1,
                              SeriesNumber=9, SeriesInstanceUID="1.2.3.4.6")
    no_pixels = dicom_files.fresh("rtplan.dcm", new_study=False)
    assert representative([*made.values(), other, no_pixels]) == made[3]
    assert representative([made[1], made[2]]) == made[1]
    with pytest.raises(NotFound):
        representative([no_pixels, tmp_path / "gone.dcm"])
