#!/usr/bin/env python3
"""Deterministic benchmark datasets built from pydicom's bundled CT_small.dcm.

    python scripts/bench/generate.py OUT --count 1000 [--studies 20] [--series-per-study 2]
                                         [--size small|large] [--seed 1] [--split 4]
    python scripts/bench/generate.py OUT --huge-gb 1      # one ~1 GB multi-frame instance

Every instance gets fresh UIDs derived from the seed (the same seed always gives the same
files, byte for byte), realistic demographics (SMITH^JOHN, ...), study dates spread over
2005-2024, and a `manifest.json` that the runner reads to build its queries.

Sizes: `small` is CT_small itself (128x128, ~39 KB), `large` a 512x512 16-bit variant
(~520 KB). `--split K` spreads the files round-robin over K sub-directories (part0..)
so that K storescu processes can send them over K associations.

Never downloads anything: only `get_testdata_file("CT_small.dcm", download=False)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Multi-frame Grayscale Word Secondary Capture: a 16-bit multi-frame class every
# archive accepts, used for the streamed ~1 GB instance.
MF_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

# Frequent US surnames (SMITH first, so `SMI*` matches a realistic share).
FAMILY = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS",
          "RODRIGUEZ", "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON",
          "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON",
          "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ", "LEWIS", "ROBINSON", "SMITHERS"]
FAMILY_WEIGHTS = [10, 8, 7, 6, 6, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3,
                  3, 3, 3, 3, 3, 3, 1]
GIVEN_M = ["JOHN", "JAMES", "ROBERT", "MICHAEL", "WILLIAM", "DAVID", "RICHARD", "JOSEPH",
           "THOMAS", "CHARLES", "DANIEL", "MATTHEW", "ANTHONY", "MARK", "PAUL"]
GIVEN_F = ["MARY", "PATRICIA", "JENNIFER", "LINDA", "ELIZABETH", "BARBARA", "SUSAN", "JESSICA",
           "SARAH", "KAREN", "NANCY", "LISA", "BETTY", "MARGARET", "SANDRA"]
DESCRIPTIONS = ["CT CHEST W/O CONTRAST", "CT HEAD W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST",
                "CT ANGIO CHEST", "CT SPINE LUMBAR", "CT SINUS", "CT KNEE RIGHT"]
BODY_PARTS = ["CHEST", "HEAD", "ABDOMEN", "CHEST", "LSPINE", "HEAD", "KNEE"]
SERIES_DESC = ["AXIAL 5MM", "AXIAL 1.25MM", "CORONAL MPR", "SAGITTAL MPR", "SCOUT"]
REFERRERS = ["HOUSE^GREGORY", "GREY^MEREDITH", "ROSS^DOUG", "WELBY^MARCUS", "KILDARE^JAMES"]
FIRST_STUDY_DATE = date(2005, 1, 1)
FORMAT_VERSION = 2   # bump when the output changes, so cached datasets are regenerated
STUDY_DATE_SPAN_DAYS = 20 * 365


def uid(seed: int, *parts: object) -> str:
    """A deterministic 2.25 UID (PS3.5 B.2: UUID-derived) for (seed, parts)."""
    h = int.from_bytes(hashlib.sha256(repr((seed, *parts)).encode()).digest()[:16], "big")
    # Always 39 digits (10**38 <= n < 2**128), so every UID has the same length and
    # the per-instance byte patching in _SeriesTemplate keeps element lengths intact.
    return f"2.25.{10**38 + h % (2**128 - 10**38)}"


@dataclass
class SeriesPlan:
    uid: str
    number: int
    description: str
    count: int


@dataclass
class StudyPlan:
    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    description: str
    body_part: str
    referrer: str
    series: list[SeriesPlan] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(s.count for s in self.series)


def plan(count: int, studies: int, series_per_study: int, seed: int) -> list[StudyPlan]:
    """Who and what: `count` instances over `studies` x `series_per_study` series."""
    if count < 1 or studies < 1 or series_per_study < 1:
        raise ValueError("count, studies and series per study must be at least 1")
    studies = min(studies, count)
    rng = random.Random(seed)
    n_series = studies * series_per_study
    per_series = [count // n_series + (1 if i < count % n_series else 0) for i in range(n_series)]
    # About 0.7 patients per study: some patients come back for a second study.
    n_patients = max(1, (studies * 7 + 9) // 10)
    patients = []
    for p in range(n_patients):
        sex = rng.choice("MF")
        family = rng.choices(FAMILY, FAMILY_WEIGHTS)[0]
        given = rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
        # Born 1930-2004, so every study (2005 on) gives a non-negative PatientAge.
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(75 * 365))
        patients.append((f"P{seed:04d}{p:06d}", f"{family}^{given}", birth.strftime("%Y%m%d"),
                         sex))
    out: list[StudyPlan] = []
    for s in range(studies):
        pid, name, birth, sex = patients[s % n_patients if s < n_patients
                                         else rng.randrange(n_patients)]
        kind = rng.randrange(len(DESCRIPTIONS))
        when = FIRST_STUDY_DATE + timedelta(days=rng.randrange(STUDY_DATE_SPAN_DAYS))
        study = StudyPlan(
            study_uid=uid(seed, "study", s), patient_id=pid, patient_name=name,
            birth_date=birth, sex=sex, study_date=when.strftime("%Y%m%d"),
            study_time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            accession=f"A{seed:03d}{s:07d}", description=DESCRIPTIONS[kind],
            body_part=BODY_PARTS[kind], referrer=rng.choice(REFERRERS))
        for k in range(series_per_study):
            n = per_series[s * series_per_study + k]
            if n:
                study.series.append(SeriesPlan(uid(seed, "series", s, k), k + 1,
                                               SERIES_DESC[k % len(SERIES_DESC)], n))
        out.append(study)
    return out


def _template(size: str) -> Dataset:
    path = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise SystemExit("pydicom's bundled CT_small.dcm is missing")
    ds = pydicom.dcmread(path)
    # Identifiers of the original patient must not leak into the generated ones.
    for kw in ("OtherPatientIDsSequence", "InstanceCreatorUID", "DataSetTrailingPadding"):
        if kw in ds:
            delattr(ds, kw)
    if size == "large":
        ds.Rows = 512
        ds.Columns = 512
        ds.PixelSpacing = [0.7, 0.7]
        ds.PixelData = b"\0" * (512 * 512 * 2)   # replaced per instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = "PACS_BENCH"
    if "SourceApplicationEntityTitle" in ds.file_meta:
        del ds.file_meta.SourceApplicationEntityTitle
    return ds


@dataclass
class Manifest:
    seed: int
    size: str
    count: int
    bytes: int
    split: int
    studies: list[dict[str, Any]]
    files: int = 0
    version: int = 0

    def write(self, out: Path) -> None:
        (out / "manifest.json").write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def read(out: Path) -> Manifest:
        return Manifest(**json.loads((out / "manifest.json").read_text()))


def small_set(data_dir: Path, count: int, series_per_study: int = 2) -> Path:
    """Where the scripts keep the small set of `count` instances (the manifest's reuse
    check does not look at the series per study, so each choice has its own directory)."""
    suffix = "" if series_per_study == 2 else f"-s{series_per_study}"
    return data_dir / f"small-{count}{suffix}"


def generate(out: str | Path, count: int, studies: int | None = None, series_per_study: int = 2,
             size: str = "small", seed: int = 1, split: int = 1) -> Manifest:
    """Write the dataset under `out` and return its manifest (also saved as manifest.json).

    If `out/manifest.json` exists with the same parameters, the files are reused.
    """
    out = Path(out)
    if studies is None:
        studies = max(1, count // 50)
    params = dict(seed=seed, size=size, count=count, split=split, version=FORMAT_VERSION)
    mf = out / "manifest.json"
    if mf.exists():
        old = json.loads(mf.read_text())
        if {k: old.get(k) for k in params} == params and \
                len(old.get("studies", [])) == min(studies, count):
            return Manifest(**old)
    if out.exists():
        shutil.rmtree(out)   # stale files of another version or size must not be sent
    out.mkdir(parents=True, exist_ok=True)
    plans = plan(count, studies, series_per_study, seed)
    ds = _template(size)
    rng = random.Random(seed * 7919 + 17)
    total = 0
    index = 0
    for s, st in enumerate(plans):
        _set_study(ds, st, s, seed)
        for se in st.series:
            ds.SeriesInstanceUID = se.uid
            ds.SeriesNumber = se.number
            ds.SeriesDescription = se.description
            series = _SeriesTemplate(ds)
            for i in range(se.count):
                data = series.instance(uid(seed, "sop", st.study_uid, se.number, i), i,
                                       rng.randbytes(512 * 512 * 2) if size == "large" else None)
                sub = out / f"part{index % split}" if split > 1 else out
                path = sub / f"st{s:05d}" / f"se{se.number:02d}" / f"{i:05d}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                total += len(data)
                index += 1
    manifest = Manifest(seed=seed, size=size, count=count, bytes=total, split=split,
                        studies=[asdict(p) for p in plans], files=index,
                        version=FORMAT_VERSION)
    manifest.write(out)
    return manifest


def _set_study(ds: Dataset, st: StudyPlan, s: int, seed: int) -> None:
    ds.StudyInstanceUID = st.study_uid
    ds.PatientID = st.patient_id
    ds.PatientName = st.patient_name
    ds.PatientBirthDate = st.birth_date
    ds.PatientSex = st.sex
    ds.PatientAge = f"{int(st.study_date[:4]) - int(st.birth_date[:4]):03d}Y"
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
               "InstanceCreationDate"):
        setattr(ds, kw, st.study_date)
    for kw in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
               "InstanceCreationTime"):
        setattr(ds, kw, st.study_time)
    ds.AccessionNumber = st.accession
    ds.StudyID = str(s + 1)
    ds.StudyDescription = st.description
    ds.BodyPartExamined = st.body_part
    ds.ReferringPhysicianName = st.referrer
    ds.InstitutionName = "BENCH GENERAL HOSPITAL"
    ds.FrameOfReferenceUID = uid(seed, "for", s)


# Fixed-width placeholders: the series is encoded once by pydicom, then each instance is
# that byte string with its own UID, number and slice position patched in (~20x faster
# than one dcmwrite per instance, which matters for the 100k ingest set).
_PH_UID = "2.25.299999999999999999999999999999999999999"   # same length as uid()
_PH_NUM = "999999"
_PH_POS = "-9999.99"


class _SeriesTemplate:
    def __init__(self, ds: Dataset) -> None:
        ds.SOPInstanceUID = _PH_UID
        ds.file_meta.MediaStorageSOPInstanceUID = _PH_UID
        ds.InstanceNumber = _PH_NUM
        ds.SliceLocation = _PH_POS
        ds.ImagePositionPatient = ["-150.0", "-150.0", _PH_POS]
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.data = buf.getvalue()
        d = self.data
        ph = _PH_UID.encode()

        def find(prefix: bytes, value: bytes) -> int:
            pos = d.find(prefix + value)
            if pos < 0 or d.find(prefix + value, pos + 1) >= 0:
                raise AssertionError(f"placeholder {prefix!r} not unique")
            return pos + len(prefix)

        ulen = struct.pack("<H", len(ph))
        self.uid_at = [find(b"\x02\x00\x03\x00UI" + ulen, ph),
                       find(b"\x08\x00\x18\x00UI" + ulen, ph)]
        self.num_at = find(b"\x20\x00\x13\x00IS\x06\x00", _PH_NUM.encode())
        self.pos_at = [find(b"\x20\x00\x41\x10DS\x08\x00", _PH_POS.encode()),
                       find(b"\x20\x00\x32\x00DS\x16\x00-150.0\\-150.0\\",
                            _PH_POS.encode())]
        self.pixels_at = len(d) - len(ds.PixelData)

    def instance(self, sop: str, i: int, pixels: bytes | None) -> bytes:
        b = bytearray(self.data)
        u = sop.encode()
        assert len(u) == len(_PH_UID)
        for at in self.uid_at:
            b[at:at + len(u)] = u
        b[self.num_at:self.num_at + 6] = f"{i + 1:<6d}".encode()
        pos = f"{-5.0 * (i % 2000):8.2f}".encode()
        for at in self.pos_at:
            b[at:at + 8] = pos
        if pixels is not None:
            raw = bytearray(pixels)
            raw[1::2] = raw[1::2].translate(_LOW_NIBBLE)   # 12-bit CT values
            b[self.pixels_at:] = raw
        return bytes(b)


_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


# ------------------------------------------------------------------ the ~1 GB instance

def _elem(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (value already padded to even length)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OF", "OD", "OL", "OV"):
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def write_huge(path: str | Path, frames: int = 2000, rows: int = 512, cols: int = 512,
               seed: int = 1) -> dict[str, Any]:
    """Write one multi-frame 16-bit instance by hand, streaming the Pixel Data.

    pydicom would need the whole Pixel Data in memory; here the header is encoded
    element by element and the ~1 GB of pixels written in 1 MiB pieces, so the
    generator stays at a few MB of RAM whatever the size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop = uid(seed, "huge", frames)
    study = uid(seed, "huge-study", frames)
    series = uid(seed, "huge-series", frames)
    meta_body = b"".join([
        _elem(0x00020001, "OB", b"\x00\x01"),
        _elem(0x00020002, "UI", MF_WORD_SC_STORAGE.encode()),
        _elem(0x00020003, "UI", sop.encode()),
        _elem(0x00020010, "UI", ExplicitVRLittleEndian.encode()),
        _elem(0x00020012, "UI", b"1.2.826.0.1.3680043.8.498.1"),
        _elem(0x00020013, "SH", b"PACS_BENCH"),
    ])
    meta = _elem(0x00020000, "UL", struct.pack("<I", len(meta_body))) + meta_body
    header = b"".join([
        _elem(0x00080005, "CS", b"ISO_IR 100"),
        _elem(0x00080008, "CS", b"DERIVED\\SECONDARY"),
        _elem(0x00080016, "UI", MF_WORD_SC_STORAGE.encode()),
        _elem(0x00080018, "UI", sop.encode()),
        _elem(0x00080020, "DA", b"20240102"),
        _elem(0x00080030, "TM", b"101500"),
        _elem(0x00080050, "SH", b"AHUGE0001"),
        _elem(0x00080060, "CS", b"OT"),
        _elem(0x00080064, "CS", b"WSD"),
        _elem(0x00080090, "PN", b"HOUSE^GREGORY"),
        _elem(0x00081030, "LO", b"HUGE MULTIFRAME"),
        _elem(0x00100010, "PN", b"SMITH^JOHN"),
        _elem(0x00100020, "LO", b"PHUGE0001"),
        _elem(0x00100030, "DA", b"19600101"),
        _elem(0x00100040, "CS", b"M"),
        _elem(0x0020000D, "UI", study.encode()),
        _elem(0x0020000E, "UI", series.encode()),
        _elem(0x00200010, "SH", b"1"),
        _elem(0x00200011, "IS", b"1"),
        _elem(0x00200013, "IS", b"1"),
        _elem(0x00200020, "CS", b"L\\P"),
        _elem(0x00280002, "US", struct.pack("<H", 1)),
        _elem(0x00280004, "CS", b"MONOCHROME2"),
        _elem(0x00280008, "IS", str(frames).encode()),
        _elem(0x00280010, "US", struct.pack("<H", rows)),
        _elem(0x00280011, "US", struct.pack("<H", cols)),
        _elem(0x00280100, "US", struct.pack("<H", 16)),
        _elem(0x00280101, "US", struct.pack("<H", 12)),
        _elem(0x00280102, "US", struct.pack("<H", 11)),
        _elem(0x00280103, "US", struct.pack("<H", 0)),
    ])
    length = rows * cols * 2 * frames
    rng = random.Random(seed)
    block = bytearray(rng.randbytes(1 << 20))
    block[1::2] = block[1::2].translate(_LOW_NIBBLE)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + meta + header)
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return {"path": str(path), "bytes": path.stat().st_size, "sop_instance_uid": sop,
            "study_uid": study, "series_uid": series, "patient_id": "PHUGE0001"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--count", type=int, default=1000, help="instances (default 1000)")
    p.add_argument("--studies", type=int, help="studies (default count/50)")
    p.add_argument("--series-per-study", type=int, default=2, help="series per study (default 2)")
    p.add_argument("--size", choices=["small", "large"], default="small",
                   help="small: CT_small 128x128 (~39 KB); large: 512x512 16-bit (~520 KB)")
    p.add_argument("--seed", type=int, default=1, help="same seed, same files (default 1)")
    p.add_argument("--split", type=int, default=1, help="spread over N sub-directories")
    p.add_argument("--huge-gb", type=float, metavar="GB",
                   help="instead: write one multi-frame instance of about GB gigabytes")
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.huge_gb:
        frames = max(1, int(args.huge_gb * (1 << 30) / (512 * 512 * 2)))
        info = write_huge(Path(args.out) / "huge.dcm", frames=frames, seed=args.seed)
        print(f"{info['path']}: {info['bytes'] / 1e6:.0f} MB, {frames} frames "
              f"in {time.perf_counter() - started:.1f} s")
        return 0
    m = generate(args.out, args.count, args.studies, args.series_per_study, args.size,
                 args.seed, args.split)
    n_patients = len({s["patient_id"] for s in m.studies})
    print(f"{args.out}: {m.files} instances, {len(m.studies)} studies, {n_patients} patients, "
          f"{m.bytes / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
