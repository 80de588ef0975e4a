"""Bytes to an RGB image under one documented policy; failures are values, not exceptions.

Policy (applied before any member's preprocessing):
- EXIF orientation is applied; a broken EXIF block is ignored, not fatal.
- Alpha (RGBA, LA, palette transparency) is composited on ``background`` (white).
- 16-bit images are scaled to 8 bits (value >> 8), never clamped.
- CMYK/YCCK and every other mode are converted to RGB by Pillow.
- Animated GIF/WebP/APNG and MPO: the first frame; the frame count is recorded.
- Images over ``max_pixels`` (width x height) are ``too_large``: checked from
  the header before any pixel is decoded, so memory stays bounded.
- Truncated files are ``truncated`` and never embedded half-decoded (Pillow's
  process-wide LOAD_TRUNCATED_IMAGES is left alone).
- With ``draft`` (``runtime.jpeg_draft``), a JPEG is decoded at the smallest of
  1/1, 1/2, 1/4, 1/8 scale (Pillow's draft mode: libjpeg's DCT scaling) that keeps
  both sides at least ``draft`` pixels; the recorded width and height stay the file's.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# the documented failure codes (README "Statuses")
STATUSES = ("ok", "empty", "unidentified", "unsupported", "truncated", "too_large",
            "decode_error", "io_error")

# content that is an image in a format Pillow cannot decode here
_UNSUPPORTED_MAGIC = (
    (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftyphevc"), (4, b"ftypmif1"), (4, b"ftypmsf1"),
    (4, b"ftypavif"), (4, b"ftypavis"), (0, b"<svg"), (0, b"\x00\x00\x00\x0cjP"),
)
_UNSUPPORTED_EXT = (".heic", ".heif", ".avif", ".svg")


DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 9459 x 9459)


@dataclass(frozen=True, slots=True)
class DecodePolicy:
    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)
    draft: int = 0  # JPEGs: decode at a reduced scale keeping both sides >= this (0: off)


@dataclass(slots=True)
class Decoded:
    """An RGB image, or why there is none."""

    image: Image.Image | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None


def _fail(status: str, error: str) -> Decoded:
    return Decoded(None, status, error[:300])


def _is_unsupported(data: bytes, name: str) -> bool:
    head = data[:64].lstrip() if data[:1] in (b" ", b"\n", b"\t", b"\r") else data[:64]
    if any(head[o:o + len(m)] == m for o, m in _UNSUPPORTED_MAGIC):
        return True
    if head.startswith(b"<?xml") and b"<svg" in data[:4096]:
        return True
    return name.lower().endswith(_UNSUPPORTED_EXT)


def decode_image(data: bytes, name: str = "", policy: DecodePolicy | None = None) -> Decoded:
    """Decode ``data`` to RGB under the module's policy; never raises on bad input."""
    policy = policy or DecodePolicy()
    if not data:
        return _fail("empty", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bombs are checked below; EXIF/TIFF noise is not ours
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > policy.max_pixels:
                return _fail("too_large", f"{w}x{h} exceeds {policy.max_pixels} pixels")
            if w <= 0 or h <= 0:
                return _fail("decode_error", f"invalid size {w}x{h}")
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                im.seek(0)
            elif policy.draft and im.format == "JPEG":
                im.draft(im.mode, (policy.draft, policy.draft))
            drafted = im.size
            im.load()
            rgb = _to_rgb(im, policy)
    except Image.DecompressionBombError as e:
        return _fail("too_large", str(e))
    except UnidentifiedImageError:
        if _is_unsupported(data, name):
            return _fail("unsupported", "an image format without a decoder here")
        return _fail("unidentified", "not an image Pillow recognises")
    except OSError as e:
        msg, low = str(e), str(e).lower()
        if "truncated" in low or "broken data stream" in low or "unexpected end" in low:
            return _fail("truncated", msg)
        return _fail("decode_error", f"{type(e).__name__}: {msg}")
    except MemoryError:
        return _fail("too_large", "out of memory while decoding")
    except Exception as e:  # Pillow plugins raise ValueError, SyntaxError, struct.error...
        return _fail("decode_error", f"{type(e).__name__}: {e}")
    if rgb.size != drafted:  # turned by its EXIF orientation
        w, h = h, w
    return Decoded(rgb, "ok", None, w, h, frames)


def _to_rgb(im: Image.Image, policy: DecodePolicy) -> Image.Image:
    with contextlib.suppress(Exception):  # a corrupt EXIF block must not cost the image
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.uint32)
        # 'I' holds 16-bit sources widened to 32 bits: scale from 16 bits when above 8
        shift = 8 if mode != "I" or arr.max(initial=0) > 255 else 0
        im = Image.fromarray(np.clip(arr >> shift, 0, 255).astype(np.uint8))
    elif mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        hi = float(arr.max(initial=0.0))
        scale = 255.0 if hi <= 1.0 else (255.0 / hi if hi > 0 else 1.0)
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, policy.background)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im if im.mode == "RGB" else im.convert("RGB")
