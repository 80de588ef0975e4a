"""JPEG headers read without decoding, and batched JPEG decoding on the GPU (nvJPEG).

The header check routes only complete, baseline-or-progressive YCbCr/grey JPEGs
within the pixel limit to the GPU; everything else (CMYK, truncated files, other
formats) takes the CPU decode policy, which knows how to fail well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the reader processes, which import this module
    import torch

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True, slots=True)
class JpegInfo:
    width: int
    height: int
    components: int
    exif: bool = False  # an APP1 Exif block (which may rotate the image) precedes the frame


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Size and components of a complete JPEG (ends with EOI), else None."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    i, n = 2, len(data)
    exif = False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            exif = True
        if marker in _SOF:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return JpegInfo(w, h, data[i + 9], exif) if w and h else None
        i += 2 + length
    return None


def decode_jpegs_on_device(blobs: list[bytes], device: torch.device,
                           exif: list[bool] | None = None) -> list[torch.Tensor | None]:
    """Decode JPEGs to uint8 [3, H, W] on ``device``, EXIF orientation applied.

    Files with an Exif block (``exif[i]``) are decoded in their own batched call
    with orientation handling, the rest without it (that handling costs about
    40% of nvJPEG's throughput on an H100). If a batch fails, each image is tried
    alone, and one the GPU cannot decode is None (the caller falls back to the CPU).
    """
    if not blobs:
        return []
    flags = exif if exif is not None else [True] * len(blobs)
    out: list[torch.Tensor | None] = [None] * len(blobs)
    for want in (False, True):
        idx = [i for i, f in enumerate(flags) if bool(f) == want]
        if idx:
            for i, t in zip(idx, _decode([blobs[i] for i in idx], device, want), strict=True):
                out[i] = t
    return out


def _decode(blobs: list[bytes], device: torch.device, orient: bool) -> list[torch.Tensor | None]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device,
                                apply_exif_orientation=orient))
    except RuntimeError:
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device,
                                       apply_exif_orientation=orient))
            except RuntimeError:
                out.append(None)
        return out
