"""Resize-then-center-crop geometry, as torchvision's Resize(int) and CenterCrop compute
it, and that transform applied with Pillow. Torch-free: reader processes use it.
"""

from __future__ import annotations

from typing import NamedTuple

from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class CropSpec(NamedTuple):
    """What a member's tensor preprocessing does to pixels before normalising."""

    resize: int  # the short side's length after resizing
    crop: int  # the side of the square center crop
    interpolation: str  # bicubic | bilinear


def resize_crop(h: int, w: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) for an h x w image."""
    short, long_ = min(h, w), max(h, w)
    new_long = int(resize * long_ / short)
    new_h, new_w = (resize, new_long) if h <= w else (new_long, resize)
    return new_h, new_w, int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))


def pil_crop(image: Image.Image, spec: CropSpec) -> Image.Image:
    """``spec`` applied with Pillow: exactly the upstream Resize + CenterCrop pixels."""
    new_h, new_w, top, left = resize_crop(image.height, image.width, spec.resize, spec.crop)
    resized = image.resize((new_w, new_h), _RESAMPLE[spec.interpolation])
    return resized.crop((left, top, left + spec.crop, top + spec.crop))
