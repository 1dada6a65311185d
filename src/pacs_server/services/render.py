"""Rendering a stored frame as a consumer image (JPEG or PNG): WADO-RS `rendered` and
`thumbnail` (PS3.18 9.5, 10.4.1.1), and WADO-URI `contentType=image/jpeg`.

The pixel pipeline of PS3.3 C.11 on one frame, decoded by pydicom's pixel handlers
(pylibjpeg, pyjpegls: every syntax the archive transcodes):

1. Modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence);
2. VOI: the `window` query parameter (center, width, function: PS3.18 8.3.5.1.3), else
   the instance's first Window Center/Width (and VOI LUT Function), else its VOI LUT
   Sequence, else the frame's own value range;
3. MONOCHROME1 inverted so that the output reads as MONOCHROME2 (PS3.3 C.7.6.3.1.2);
4. colour: RGB as decoded (pydicom converts YBR to RGB), PALETTE COLOR through its
   palette; more than 8 bits per sample scaled to 8.

Then scaled to fit the `viewport` (aspect ratio kept, never enlarged) and encoded with
Pillow. Reading and encoding are blocking: callers run `render()` in a thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from pacs_server.errors import InvalidRequest, MissingFile, NotFound, TranscodeFailed

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
VoiFunction = Literal["linear", "linear_exact", "sigmoid"]
THUMBNAIL_SIZE = 128        # longest side of a thumbnail without a viewport
MAX_VIEWPORT = 4096


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: VoiFunction = "linear"


@dataclass(frozen=True)
class RenderOptions:
    """What the request asks for; `frame` is 1-based (PS3.18 frame numbers)."""

    media_type: str = "image/jpeg"
    frame: int = 1
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def parse_window(value: str) -> Window:
    """`window=center,width[,function]` (PS3.18 Table 8.3.5-1)."""
    parts = value.split(",")
    if len(parts) not in (2, 3):
        raise InvalidRequest("window: expected center,width[,linear|linear-exact|sigmoid]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidRequest(f"window: {value!r} has a center or width that is not a "
                             "number") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise InvalidRequest("window: width must be a finite number above 0")
    function = (parts[2] if len(parts) == 3 else "linear").strip().lower().replace("-", "_")
    if function not in ("linear", "linear_exact", "sigmoid"):
        raise InvalidRequest(f"window: unknown function {parts[2]!r}")
    return Window(center, width, function)  # type: ignore[arg-type]


def parse_viewport(value: str) -> tuple[int, int]:
    """`viewport=vw,vh` (PS3.18 8.3.5.1.2); the source-rectangle form is not supported."""
    parts = value.split(",")
    if len(parts) != 2:
        raise InvalidRequest("viewport: expected width,height (the source rectangle "
                             "form vw,vh,sx,sy,sw,sh is not supported)")
    try:
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidRequest(f"viewport: {value!r} is not two integers") from None
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise InvalidRequest(f"viewport: each side must be 1-{MAX_VIEWPORT}")
    return width, height


def render(path: Path, opts: RenderOptions) -> bytes:
    """The frame `opts.frame` of the instance file at `path`, encoded as opts.media_type.

    Raises:
        MissingFile: the file is gone.
        NotFound: the instance has no pixel data or no such frame.
        TranscodeFailed: its pixel data cannot be decoded.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise MissingFile(f"{path.name}: the stored file is missing") from None
    frames = int(ds.get("NumberOfFrames") or 1)
    if "Rows" not in ds or "Columns" not in ds:
        raise NotFound("the instance has no pixel data to render")
    if not 1 <= opts.frame <= frames:
        raise NotFound(f"frame {opts.frame}: the instance has {frames} frame(s)")
    try:
        arr = pixel_array(path, index=opts.frame - 1 if frames > 1 else None)
    except (ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise TranscodeFailed(f"pixel data cannot be decoded: {exc}") from None
    image = _to_8bit(arr, ds, opts.window)
    return _encode(image, opts)


def representative(paths: list[Path]) -> Path:
    """The instance a series or study thumbnail shows: among those with pixel data, the
    middle one (by Instance Number) of the first series (by Series Number).

    Raises:
        NotFound: none has pixel data.
    """
    keyed = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_PICK_TAGS)
        except (OSError, ValueError):
            continue        # gone or unreadable: another one is shown
        if "Rows" in ds:
            keyed.append((_number(ds, "SeriesNumber"), str(ds.get("SeriesInstanceUID", "")),
                          _number(ds, "InstanceNumber"), str(path)))
    if not keyed:
        raise NotFound("nothing here has pixel data to render")
    keyed.sort()
    first = [k for k in keyed if k[:2] == keyed[0][:2]]
    return Path(first[(len(first) - 1) // 2][3])


_PICK_TAGS = [0x00200011, 0x0020000E, 0x00200013, 0x00280010]


def _number(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _to_8bit(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        return _scale(apply_color_lut(arr, ds).astype(np.float64), 0, 65535
                      if int(ds.get("BitsAllocated", 8)) > 8 else 255)
    if arr.ndim == 3:           # RGB (YBR already converted by pydicom)
        bits = int(ds.get("BitsStored", 8))
        return _scale(arr.astype(np.float64), 0, (1 << bits) - 1)
    values = apply_modality_lut(arr, ds).astype(np.float64)
    out = _voi(values, ds, window)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _voi(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    if window is None:
        window = _instance_window(ds)
    if window is not None:
        return _apply_window(values, window)
    if "VOILUTSequence" in ds:
        mapped = apply_voi_lut(values, ds).astype(np.float64)
        return _scale(mapped, float(mapped.min()), float(mapped.max()))
    return _scale(values, float(values.min()), float(values.max()))


def _instance_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        c = float(center[0] if _multi(center) else center)
        w = float(width[0] if _multi(width) else width)
    except (TypeError, ValueError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).lower()
    if w <= 0 or function not in ("linear", "linear_exact", "sigmoid"):
        return None
    return Window(c, w, function)  # type: ignore[arg-type]


def _multi(value: object) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (linear), C.11.2.1.3.2 (linear exact), C.11.2.1.3.1 (sigmoid)."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "linear_exact":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0) * 255.0
    if w <= 1:                  # linear needs width >= 1 (C.11.2.1.2.1): a threshold
        return (values > c - 0.5).astype(np.float64) * 255.0
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0


def _encode(image: np.ndarray, opts: RenderOptions) -> bytes:
    pixels = np.round(image).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    if opts.viewport is not None:
        picture.thumbnail(opts.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    fmt = MEDIA_TYPES[opts.media_type]
    if fmt == "JPEG":
        picture.save(out, fmt, quality=opts.quality)
    else:
        picture.save(out, fmt)
    return out.getvalue()
