"""JPEG headers read without decoding, and batched JPEG decoding on the GPU (nvJPEG).

The header check (which also reads the EXIF orientation: the GPU decoder ignores
it) routes only complete, baseline-or-progressive YCbCr/grey JPEGs
within the pixel limit to the GPU; everything else (CMYK, truncated files, other
formats) takes the CPU decode policy, which knows how to fail well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of the reader processes, which import this module
    import torch

# torch warns that a tensor viewing bytes is read-only; the decoders only read their input
warnings.filterwarnings("ignore", message="The given buffer is not writable")

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True, slots=True)
class JpegInfo:
    width: int  # as stored, before the EXIF orientation is applied
    height: int
    components: int
    orientation: int = 1  # EXIF orientation (1-8; 1: as stored)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) once the orientation is applied."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Size, components and EXIF orientation of a complete JPEG (ends with EOI), else None."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    i, n = 2, len(data)
    orientation = 1
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
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00" and orientation == 1:
            orientation = exif_orientation(data[i + 10:i + 2 + length])
        if marker in _SOF:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return JpegInfo(w, h, data[i + 9], orientation) if w and h else None
        i += 2 + length
    return None


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an Exif TIFF block; 1 when absent or broken
    (as Pillow's ``exif_transpose`` leaves such images alone)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[e:e + 2], order) == 0x0112:
            if int.from_bytes(tiff[e + 2:e + 4], order) != 3:  # SHORT
                return 1
            value = int.from_bytes(tiff[e + 8:e + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned as Pillow's ``ImageOps.exif_transpose`` turns an image."""
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # transpose
        return image.transpose(-2, -1)
    if orientation == 6:  # rotated: turn 90 degrees clockwise
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:  # transverse
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # turn 90 degrees counter-clockwise
        return image.transpose(-2, -1).flip(-2)
    return image


def decode_jpegs_on_device(blobs: list[bytes], device: torch.device,
                           orientations: list[int] | None = None) -> list[torch.Tensor | None]:
    """Decode JPEGs to uint8 [3, H, W] on ``device`` in one batched call, then turn each
    by its EXIF orientation (``orientations[i]``, from :func:`jpeg_info`).

    torchvision's GPU decoder ignores EXIF orientation, so it is applied here, on the
    device. If the batch fails, each image is tried alone, and one the GPU cannot
    decode is None (the caller falls back to the CPU).
    """
    if not blobs:
        return []
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # views of the bytes, not copies: the decoder only reads them
    tensors = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
    try:
        out: list[torch.Tensor | None] = list(decode_jpeg(
            tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=False))
    except RuntimeError:
        out = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device,
                                       apply_exif_orientation=False))
            except RuntimeError:
                out.append(None)
    if orientations:
        out = [t if t is None or o == 1 else apply_orientation(t, o).contiguous()
               for t, o in zip(out, orientations, strict=True)]
    return out
