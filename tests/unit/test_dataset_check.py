"""The structure check of received datasets, on pydicom's real files and their mutations."""

from __future__ import annotations

import os
import random
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs_server.errors import DatasetMismatch, PacsError, UnreadableDataset
from pacs_server.services import dataset_check
from pacs_server.services.dataset_check import Walked, check_dataset
from pacs_server.services.ingest import INDEXED_TAGS, dataset_offset
from support.dcmtk import dcmtk_path
from support.instances import encode, new_dataset
from support.mutations import (
    SAMPLES,
    Sample,
    cases,
    dcmdump_verdicts,
    load_sample,
    stricter_reason,
    top_level_elements,
    write_case,
)

# pydicom files that are broken on purpose (dcmdump refuses them too).
BROKEN = ("MR_truncated.dcm", "rtplan_truncated.dcm", "SC_rgb_jpeg.dcm")
MORE = ("JPEG2000-embedded-sequence-delimiter.dcm", "MR_small_padded.dcm",
        "SC_ybr_full_422_uncompressed.dcm", "UN_sequence.dcm", "waveform_ecg.dcm",
        "examples_overlay.dcm", "nested_priv_SQ.dcm", "priv_SQ.dcm", "test-SR.dcm",
        "SC_rgb_rle_32bit_2frame.dcm", "liver_expb_1frame.dcm", "badVR.dcm")


def check(tmp_path: Path, body: bytes, ts: str) -> None:
    path = tmp_path / "ds.bin"
    path.write_bytes(body)
    with open(path, "rb") as fh:
        check_dataset(fh, 0, ts)


def refused(tmp_path: Path, body: bytes, ts: str) -> str:
    with pytest.raises(UnreadableDataset) as err:
        check(tmp_path, body, ts)
    return str(err.value)


@pytest.mark.parametrize("name", SAMPLES + MORE)
def test_real_files_pass(tmp_path: Path, name: str) -> None:
    s = load_sample(name)
    check(tmp_path, s.body, s.transfer_syntax)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_real_files_are_refused(tmp_path: Path, name: str) -> None:
    s = load_sample(name)
    assert "offset" in refused(tmp_path, s.body, s.transfer_syntax)


def test_trailing_garbage_names_the_offset(tmp_path: Path) -> None:
    s = load_sample("CT_small.dcm")
    message = refused(tmp_path, s.body + b"\x01" * 16, s.transfer_syntax)
    assert message.endswith(f"offset {len(s.body)}"), message


def test_junk_inside_a_defined_length_sequence(tmp_path: Path) -> None:
    s = load_sample("CT_small.dcm")
    body = s.body
    at = body.index(b"\x10\x00\x02\x10SQ\x00\x00")        # (0010,1002) SQ, defined length
    (length,) = struct.unpack_from("<I", body, at + 8)
    end = at + 12 + length
    mutated = (body[:at + 8] + struct.pack("<I", length + 16) + body[at + 12:end]
               + b"\x5a" * 16 + body[end:])
    message = refused(tmp_path, mutated, s.transfer_syntax)
    assert "(0010,1002)" in message and len(message.split(" at ")[0]) < 40, message


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "ExplVR_BigEnd.dcm",
                                  "JPEG2000.dcm", "MR_small_implicit.dcm"])
def test_every_truncation_is_refused(tmp_path: Path, name: str) -> None:
    """Cut anywhere but between two top-level elements (where what is left is a
    shorter but well-formed dataset, for dcmdump as for us), the dataset is refused."""
    s = load_sample(name)
    boundaries = {e.header for e in top_level_elements(s)}
    step = max(1, len(s.body) // 400)
    cuts = [c for c in range(1, len(s.body), step) if c not in boundaries]
    for cut in cuts:
        refused(tmp_path, s.body[:cut], s.transfer_syntax)
    for cut in sorted(boundaries)[1:]:
        check(tmp_path, s.body[:cut], s.transfer_syntax)


def test_truncated_or_padded_deflate_stream(tmp_path: Path) -> None:
    s = load_sample("image_dfl.dcm")
    check(tmp_path, s.body, s.transfer_syntax)          # ends with a gzip trailer
    # The same dataset, raw deflate without trailer, and with one pad byte.
    raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(s.body)
    co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    plain = co.compress(raw) + co.flush()
    check(tmp_path, plain, DeflatedExplicitVRLittleEndian)
    check(tmp_path, plain + b"\0", DeflatedExplicitVRLittleEndian)
    assert "deflated stream is truncated" in refused(tmp_path, plain[:-20],
                                                     DeflatedExplicitVRLittleEndian)
    assert "bytes after the deflated stream" in refused(tmp_path, plain + b"junk",
                                            DeflatedExplicitVRLittleEndian)
    # An inflated stream that ends inside an element.
    co = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    short = co.compress(raw[:-5]) + co.flush()
    assert "offset" in refused(tmp_path, short, DeflatedExplicitVRLittleEndian)


def test_wrong_syntax_is_refused(tmp_path: Path) -> None:
    ct = load_sample("CT_small.dcm")
    refused(tmp_path, ct.body, ImplicitVRLittleEndian)
    refused(tmp_path, ct.body, "1.2.840.10008.1.2.4.50")
    assert "not encapsulated, syntax says it is" in refused(tmp_path, ct.body,
                                                    "1.2.840.10008.1.2.4.50")
    jpeg = load_sample("SC_rgb_jpeg_dcmtk.dcm")
    assert "encapsulated, but syntax is native" in refused(
        tmp_path, jpeg.body, ExplicitVRLittleEndian)


def _nested(depth: int) -> bytes:
    """(0008,1140) sequences of undefined length nested `depth` deep (Explicit LE)."""
    head = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    tail = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return head * depth + tail * depth


def test_deep_nesting_is_refused_without_recursion_error(tmp_path: Path) -> None:
    check(tmp_path, _nested(20), ExplicitVRLittleEndian)
    assert "nested deeper" in refused(tmp_path, _nested(1000), ExplicitVRLittleEndian)
    assert "offset" in refused(tmp_path, _nested(20)[:-8], ExplicitVRLittleEndian)


def test_pixel_data_shorter_than_the_image_is_a_mismatch(tmp_path: Path) -> None:
    ds = new_dataset(pixel_bytes=64)
    ds.Rows = 2                  # 2 x 64 x 8 bits = 128 bytes, 64 sent
    with pytest.raises(DatasetMismatch, match=r"Pixel Data has 64 bytes"):
        check(tmp_path, encode(ds), ExplicitVRLittleEndian)


def test_a_huge_dataset_is_walked_with_seeks(tmp_path: Path) -> None:
    """1 GiB of (sparse) Pixel Data: walked in milliseconds and in a few kilobytes."""
    ds = new_dataset(pixel_bytes=0, Rows=32768, Columns=32768)
    length = 32768 * 32768                                  # 8 bits allocated
    header = encode(ds) + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", length)
    path = tmp_path / "huge.bin"
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + length)
    tracemalloc.start()
    started = time.perf_counter()
    with open(path, "rb") as fh:
        check_dataset(fh, 0, ExplicitVRLittleEndian)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)
    with open(path, "r+b") as fh:
        fh.truncate(len(header) + length - 1)
    with open(path, "rb") as fh, pytest.raises(UnreadableDataset, match="past the end"):
        check_dataset(fh, 0, ExplicitVRLittleEndian)


@pytest.mark.dcmtk
def test_mutations_dcmdump_refuses_are_refused(tmp_path: Path) -> None:
    """Seeded mutations: every one dcmdump calls malformed is refused; a refusal of one
    dcmdump reads is for a documented stricter rule."""
    dcmdump = dcmtk_path("dcmdump")
    assert dcmdump is not None
    samples: dict[str, Sample] = {n: load_sample(n) for n in SAMPLES}
    tally: Counter[str] = Counter()
    all_cases = cases(seed=11, count=400)
    paths = [write_case(case, samples[case.sample], tmp_path / f"{n:03d}.dcm")
             for n, case in enumerate(all_cases)]
    verdicts = dcmdump_verdicts(dcmdump, paths)
    for case, path, verdict in zip(all_cases, paths, verdicts, strict=True):
        try:
            with open(path, "rb") as fh:
                check_dataset(fh, dataset_offset(fh), case.transfer_syntax)
            ours = ""
        except PacsError as exc:
            ours = str(exc)
            # The Error Comment keeps 64 characters: what and where come first.
            assert len(ours.rsplit(" offset ", 1)[0]) <= 64, ours
        if verdict.malformed:
            assert ours, f"{case.label}: dcmdump says malformed, validator accepts"
            tally["malformed refused"] += 1
        elif ours and verdict.warned:
            tally["dcmdump warns, refused"] += 1
        elif ours:
            assert stricter_reason(ours), f"{case.label}: refused ({ours}), dcmdump reads it"
            tally["stricter"] += 1
        else:
            tally["accepted"] += 1
        os.unlink(path)
    assert tally["malformed refused"] > 250 and tally["accepted"] > 20, tally


def _verdict(path: Path, ts: str) -> object:
    """What check_dataset says of the file: its Walked, or the refusal's type and text."""
    try:
        with open(path, "rb") as fh:
            return check_dataset(fh, 0, ts, INDEXED_TAGS)
    except PacsError as exc:
        return (type(exc), str(exc))


def _fresh_verdict(path: Path, ts: str) -> object:
    """The same from the element walk alone: no proof kept or used."""
    saved = dict(dataset_check._LAYOUTS), dict(dataset_check._SEEN)
    dataset_check._LAYOUTS.clear()
    dataset_check._SEEN.clear()
    try:
        return _verdict(path, ts)
    finally:
        dataset_check._LAYOUTS.clear()
        dataset_check._SEEN.clear()
        dataset_check._LAYOUTS.update(saved[0])
        dataset_check._SEEN.update(saved[1])


@pytest.mark.parametrize("name", ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm",
                                  "nested_priv_SQ.dcm", "SC_rgb_rle_32bit_2frame.dcm",
                                  "JPEG2000.dcm"))
def test_a_proven_layout_gives_the_walks_verdict(tmp_path: Path, name: str) -> None:
    """A layout is proven on the second walk of a size and used from the third. Flipping
    any byte the proof covers makes it walk again; any byte it does not cover cannot
    change the walk's verdict: the proof's answer equals a fresh walk's, every time
    (every byte of every top-level element header, and samples of the rest)."""
    s = load_sample(name)
    ts = s.transfer_syntax
    path = tmp_path / "ds.bin"
    path.write_bytes(s.body)
    dataset_check._LAYOUTS.clear()
    dataset_check._SEEN.clear()
    first = _verdict(path, ts)
    assert isinstance(first, Walked)
    assert _verdict(path, ts) == first and dataset_check._LAYOUTS     # proof kept
    [layout] = next(iter(dataset_check._LAYOUTS.values()))
    covered = [i for i in range(layout.span) if layout.mask >> (8 * i) & 0xFF]
    assert len(covered) < layout.span
    rng = random.Random(7)
    headers = [i for el in top_level_elements(s) for i in range(el.header, el.value)]
    positions = sorted({*rng.sample(covered, min(150, len(covered))), *headers,
                        *rng.sample(range(len(s.body)), min(150, len(s.body)))})
    for pos in positions:
        for flip in (0x01, 0x80, 0xFF):
            body = bytearray(s.body)
            body[pos] ^= flip
            path.write_bytes(bytes(body))
            assert _verdict(path, ts) == _fresh_verdict(path, ts), (pos, flip)
            if pos not in covered:
                assert _verdict(path, ts) == first        # answered by the proof
    path.write_bytes(s.body)
    assert _verdict(path, ts) == first


def test_a_proven_layout_still_checks_the_pixel_length(tmp_path: Path) -> None:
    """The Image Pixel values are part of the proof: the same layout with more Rows
    (a value, not a header) is walked again and refused."""
    ds = new_dataset(pixel_bytes=64)
    ds.Rows = 1
    good = encode(ds)
    ds.Rows = 2
    short = encode(ds)
    assert len(good) == len(short)
    path = tmp_path / "ds.bin"
    path.write_bytes(good)
    for _ in range(3):
        check_dataset(open(path, "rb"), 0, ExplicitVRLittleEndian, INDEXED_TAGS)
    path.write_bytes(short)
    with pytest.raises(DatasetMismatch, match=r"Pixel Data has 64 bytes"):
        with open(path, "rb") as fh:
            check_dataset(fh, 0, ExplicitVRLittleEndian, INDEXED_TAGS)


def test_proofs_stay_bounded(tmp_path: Path) -> None:
    """One proof per (syntax, size) at most, and no more than _LAYOUTS_MAX sizes kept:
    a stream of ever new sizes keeps memory flat and is still checked."""
    dataset_check._LAYOUTS.clear()
    dataset_check._SEEN.clear()
    path = tmp_path / "ds.bin"
    for n in range(dataset_check._LAYOUTS_MAX + 10):
        ds = new_dataset(pixel_bytes=2 * (n + 1), SOPInstanceUID="1.2.3",
                         StudyInstanceUID="1.2.4", SeriesInstanceUID="1.2.5")
        ds.Rows, ds.Columns = 1, 2 * (n + 1)
        path.write_bytes(encode(ds))
        for _ in range(3):
            assert isinstance(_verdict(path, ExplicitVRLittleEndian), Walked)
    assert len(dataset_check._LAYOUTS) == dataset_check._LAYOUTS_MAX
    assert all(len(v) == 1 for v in dataset_check._LAYOUTS.values())
    assert len(dataset_check._SEEN) == dataset_check._LAYOUTS_MAX + 10
