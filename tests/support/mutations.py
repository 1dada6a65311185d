"""Seeded mutations of real DICOM files, and dcmdump's verdict on each.

Used by the validator's unit tests, the C-STORE fuzz test and scripts/fuzz_datasets.
Elements are located with pydicom's reader (top level) and by byte offset (anywhere),
never with the validator under test; whether a mutation is malformed is decided by
dcmtk's dcmdump, an independent parser.
"""

from __future__ import annotations

import random
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from support.instances import bundled_file, dataset_bytes, file_meta, write_part10

# pydicom's test files across transfer syntaxes, nesting and encapsulation.
SAMPLES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "ExplVR_BigEnd.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
    "rtplan.dcm", "rtdose.dcm", "reportsi.dcm", "image_dfl.dcm", "UN_sequence.dcm",
    "SC_rgb_small_odd.dcm",
)
KINDS = (
    "trailing_garbage", "sequence_junk", "truncate", "length_plus_one", "length_minus_one",
    "length_past_end", "bit_flip", "tag_bit_flip", "length_bit_flip", "vr_bit_flip",
    "pixel_length", "undefined_length", "wrong_syntax",
)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
_WRONG: dict[str, tuple[str, ...]] = {
    ImplicitVRLittleEndian: (ExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit),
    ExplicitVRLittleEndian: (ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit),
    ExplicitVRBigEndian: (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    DeflatedExplicitVRLittleEndian: (ExplicitVRLittleEndian,),
}


@dataclass(frozen=True)
class Sample:
    """A real file split into what a C-STORE carries: syntax, UIDs, dataset bytes."""

    name: str
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    body: bytes


@dataclass(frozen=True)
class Case:
    """One mutated dataset: the bytes sent and the transfer syntax declared for them."""

    sample: str
    kind: str
    detail: str
    transfer_syntax: str
    body: bytes

    @property
    def label(self) -> str:
        return f"{self.sample}:{self.kind}:{self.detail}"


@dataclass(frozen=True)
class Element:
    tag: int
    vr: str | None
    header: int           # offset of the tag
    length_at: int        # offset of the length field
    length_size: int      # 2 or 4
    value: int            # offset of the value
    length: int


def load_sample(name: str) -> Sample:
    path = bundled_file(name)
    meta = file_meta(path)
    return Sample(name, str(meta.TransferSyntaxUID), str(meta.MediaStorageSOPClassUID),
                  str(meta.MediaStorageSOPInstanceUID), dataset_bytes(path))


def top_level_elements(sample: Sample) -> list[Element]:
    """Top-level elements of a non-deflated sample, located by pydicom's reader."""
    ts = sample.transfer_syntax
    if ts == DeflatedExplicitVRLittleEndian:
        return []
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    ds = read_dataset(BytesIO(sample.body), implicit, little)
    out = []
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            vt, vr, length = raw.value_tell, raw.VR, raw.length
        else:      # pydicom hands empty values over decoded, with their offset
            vt, vr, length = raw.file_tell, raw.VR, 0
        if vt is None:
            continue
        if implicit:
            out.append(Element(int(tag), None, vt - 8, vt - 4, 4, vt, length))
        elif vr in _LONG_VRS:
            out.append(Element(int(tag), vr, vt - 12, vt - 4, 4, vt, length))
        else:
            out.append(Element(int(tag), vr, vt - 8, vt - 2, 2, vt, length))
    return out


def _set_length(body: bytes, el: Element, length: int, big: bool) -> bytes:
    fmt = (">" if big else "<") + ("H" if el.length_size == 2 else "I")
    length &= 0xFFFF if el.length_size == 2 else 0xFFFFFFFF
    return body[:el.length_at] + struct.pack(fmt, length) + body[el.length_at + el.length_size:]


def _flip(body: bytes, pos: int, bit: int) -> bytes:
    return body[:pos] + bytes([body[pos] ^ (1 << bit)]) + body[pos + 1:]


def mutate(sample: Sample, kind: str, rng: random.Random) -> Case | None:
    """One mutation of `kind`; None when the sample has nothing it applies to."""
    body, ts = sample.body, sample.transfer_syntax
    big = ts == ExplicitVRBigEndian
    els = top_level_elements(sample)
    defined = [e for e in els if e.length != 0xFFFFFFFF]

    def case(detail: str, new: bytes, syntax: str = ts) -> Case:
        return Case(sample.name, kind, detail, syntax, new)

    if kind == "trailing_garbage":
        n = rng.choice((1, 2, 7, 16, 33))
        return case(f"{n} bytes", body + bytes(rng.randrange(256) for _ in range(n)))
    if kind == "truncate":
        cut = rng.randrange(1, len(body))
        return case(f"at {cut}", body[:cut])
    if kind == "bit_flip":
        pos = rng.randrange(len(body))
        return case(f"byte {pos}", _flip(body, pos, rng.randrange(8)))
    if not els:
        return None
    if kind == "sequence_junk":
        seqs = [e for e in defined if e.vr == "SQ" or (e.vr is None and e.length > 8
                and body[e.value:e.value + 4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"))]
        if not seqs:
            return None
        el = rng.choice(seqs)
        n = rng.choice((4, 16))
        junk = bytes(rng.randrange(256) for _ in range(n))
        end = el.value + el.length
        grown = _set_length(body, el, el.length + n, big)
        return case(f"{n} bytes in ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    grown[:end] + junk + grown[end:])
    if kind in ("length_plus_one", "length_minus_one"):
        el = rng.choice([e for e in defined if kind == "length_plus_one" or e.length] or
                        defined)
        delta = 1 if kind == "length_plus_one" else -1
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    _set_length(body, el, el.length + delta, big))
    if kind == "length_past_end":
        el = rng.choice(defined)
        extra = rng.choice((2, 1000, 0x7FFFFFF0))
        room = len(body) - el.value
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})+{extra}",
                    _set_length(body, el, room + extra, big))
    if kind == "tag_bit_flip":
        el = rng.choice(els)
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    _flip(body, el.header + rng.randrange(4), rng.randrange(8)))
    if kind == "length_bit_flip":
        el = rng.choice(els)
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    _flip(body, el.length_at + rng.randrange(el.length_size),
                          rng.randrange(8)))
    if kind == "vr_bit_flip":
        explicit = [e for e in els if e.vr is not None]
        if not explicit:
            return None
        el = rng.choice(explicit)
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    _flip(body, el.header + 4 + rng.randrange(2), rng.randrange(8)))
    if kind == "pixel_length":
        pixel = [e for e in els if e.tag == 0x7FE00010 and e.length != 0xFFFFFFFF]
        if not pixel:
            return None
        el = pixel[0]
        new = rng.choice((el.length // 2, el.length - 2, el.length + 2, 0))
        return case(f"{el.length} -> {new}", _set_length(body, el, new, big))
    if kind == "undefined_length":
        longs = [e for e in defined if e.length_size == 4]
        if not longs:
            return None
        el = rng.choice(longs)
        return case(f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})",
                    _set_length(body, el, 0xFFFFFFFF, big))
    if kind == "wrong_syntax":
        wrong = _WRONG.get(ts, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        syntax = rng.choice(wrong)
        return case(syntax, body, syntax)
    raise ValueError(f"unknown mutation kind {kind!r}")


def cases(seed: int, count: int, samples: tuple[str, ...] = SAMPLES) -> list[Case]:
    """`count` mutations, deterministic for a seed: kinds and samples in turn."""
    rng = random.Random(seed)
    loaded = [load_sample(n) for n in samples]
    out: list[Case] = []
    i = 0
    while len(out) < count:
        sample = loaded[i % len(loaded)]
        kind = KINDS[(i // len(loaded)) % len(KINDS)]
        i += 1
        made = mutate(sample, kind, rng)
        if made is not None:
            out.append(made)
    return out


@dataclass(frozen=True)
class Verdict:
    """dcmdump's opinion: malformed (an error, or a non-zero exit), or its warnings."""

    malformed: bool
    messages: str

    @property
    def warned(self) -> bool:
        return not self.malformed and bool(self.messages)


def write_case(case: Case, sample: Sample, path: Path) -> Path:
    """The mutated dataset as a Part-10 file with a correct File Meta for its syntax."""
    write_part10(path, case.body, sop_class=sample.sop_class,
                 sop_instance=sample.sop_instance, ts=case.transfer_syntax)
    return path


def dcmdump_verdict(dcmdump: str, path: Path) -> Verdict:
    """Run dcmtk's dcmdump on a Part-10 file with its default (strict) parsing."""
    run = subprocess.run([dcmdump, str(path)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, timeout=30, check=False)
    messages = run.stderr.decode("latin-1").strip()
    malformed = run.returncode != 0 or any(line.startswith("E:")
                                           for line in messages.splitlines())
    return Verdict(malformed, messages)


def dcmdump_verdicts(dcmdump: str, paths: Sequence[Path], workers: int = 4) -> list[Verdict]:
    """`dcmdump_verdict` of each file, in order, several dcmdump processes at a time
    (each one's start-up, not its parsing, is most of its time)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: dcmdump_verdict(dcmdump, p), paths))


def samples_by_name(samples: tuple[str, ...] = SAMPLES) -> dict[str, Sample]:
    return {n: load_sample(n) for n in samples}


# Where the validator is deliberately stricter than dcmdump, which warns (or says
# nothing) and reads on; each is a rule of PS3.5. A dcmdump-clean case may be refused
# only for one of these reasons (or as a semantic mismatch, 0xA900).
STRICTER = (
    "tags not in ascending order",                  # PS3.5 7.1: ascending order
    "tag repeated",                                 # dcmdump drops the second element
    "invalid VR",                                   # PS3.5 6.2: dcmdump guesses a length
    "bytes after the deflated stream",   # dcmdump ignores them
    "encapsulated, but syntax is native",   # PS3.5 A.4
    "item runs past its sequence",                  # PS3.5 7.5: dcmdump reads on
    "item crosses its sequence end",
    "sequence delimiter length not 0",              # PS3.5 7.5.2: dcmdump ignores it
    "item delimiter length not 0",
    "delimiter or item out of place",               # dcmdump skips stray delimiters
    "value runs",             # a sequence longer than the file: dcmdump reads to the end
    "Pixel Data has",                               # PS3.3 C.7.6.3: semantic, 0xA900
)


def stricter_reason(message: str) -> bool:
    """True when a refusal message starts with one of the STRICTER reasons."""
    return message.startswith(STRICTER)
