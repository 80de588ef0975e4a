"""The decode policy: one outcome per file, correct pixels, no exception escapes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipvec_tasks.decode import STATUSES, DecodePolicy, decode_image
from tests.conftest import SHARED_IMAGES


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg(size=(64, 48), color=(200, 10, 10)) -> bytes:
    return _bytes(Image.new("RGB", size, color), "JPEG", quality=95)


def test_ok_jpeg():
    d = decode_image(_jpeg())
    assert d.status == "ok" and (d.width, d.height, d.frames) == (64, 48, 1)
    assert d.image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "name", "status"),
    [
        (b"", "x.jpg", "empty"),
        (b"<!doctype html><html><body>404</body></html>", "x.jpg", "unidentified"),
        (bytes(range(256)) * 8, "x.png", "unidentified"),
        (_jpeg((256, 256))[:600], "x.jpg", "truncated"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "x.heic",
         "unsupported"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "x.svg", "unsupported"),
    ],
    ids=["empty", "html", "garbage", "truncated-jpeg", "heif", "svg"],
)
def test_failures_have_their_status(data, name, status):
    d = decode_image(data, name)
    assert d.status == status and d.image is None and d.error
    assert d.status in STATUSES


def test_truncated_png_is_never_half_decoded():
    data = _bytes(Image.effect_noise((128, 128), 50).convert("RGB"), "PNG")
    assert decode_image(data[: len(data) // 2]).status == "truncated"
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_is_refused_from_the_header():
    data = _bytes(Image.new("L", (3000, 3000)), "PNG")
    d = decode_image(data, policy=DecodePolicy(max_pixels=1_000_000))
    assert d.status == "too_large" and "3000x3000" in d.error


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (80, 40), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    d = decode_image(_bytes(im, "JPEG", exif=exif))
    assert (d.width, d.height) == (40, 80)


def test_alpha_composited_on_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0, 255))
    d = decode_image(_bytes(im, "PNG"))
    px = np.asarray(d.image)
    assert tuple(px[5, 5]) == (255, 255, 255) and tuple(px[0, 0]) == (255, 0, 0)


def test_palette_transparency():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    d = decode_image(_bytes(im, "PNG", transparency=0))
    px = np.asarray(d.image)
    assert tuple(px[0, 0]) == (255, 255, 255) and tuple(px[1, 1]) == (0, 255, 0)


def test_sixteen_bit_is_scaled_not_clamped():
    arr = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    d = decode_image(_bytes(Image.fromarray(arr), "PNG"))
    assert d.status == "ok"
    assert list(np.asarray(d.image)[0, :, 0]) == [0, 128, 255, 3]


def test_cmyk_to_rgb():
    d = decode_image(_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    r, g, b = np.asarray(d.image)[4, 4]
    assert d.status == "ok" and r > 200 and g < 60 and b < 60


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    d = decode_image(buf.getvalue())
    assert d.frames == 3 and np.asarray(d.image)[8, 8, 0] > 200


ODD = SHARED_IMAGES / "odd"
EXPECTED_ODD = {
    "truncated_jpeg.jpg": "truncated", "truncated_image.png": "truncated",
    "decompression_bomb.gif": "too_large", "hopper.heif": "unsupported",
    "pil_sample_cmyk.jpg": "ok", "tiff_16bit_RGB.tiff": "ok", "transparent.png": "ok",
    "iss634.gif": "ok", "sugarshack.mpo": "ok", "hopper_orientation_6.jpg": "ok",
    "broken.png": "unidentified", "zero_width.gif": "unidentified",
}


@pytest.mark.skipif(not ODD.is_dir(), reason="../shared/images/odd is absent")
def test_shared_odd_files_each_get_one_outcome():
    for path in sorted(Path(ODD).iterdir()):
        d = decode_image(path.read_bytes(), path.name)
        assert d.status in STATUSES, path.name
        assert (d.image is None) == (d.status != "ok"), path.name
        if path.name in EXPECTED_ODD:
            assert d.status == EXPECTED_ODD[path.name], path.name


@pytest.mark.parametrize("orientation,display", [(1, (1600, 1000)), (6, (1000, 1600))])
def test_draft_decodes_large_jpegs_smaller_and_records_the_files_size(orientation, display):
    """runtime.jpeg_draft: the smallest DCT scale keeping both sides >= draft (here 1/4:
    400x250 >= 200), turned by EXIF as usual; width and height stay the file's."""
    im = Image.new("RGB", (1600, 1000), (30, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(im, "JPEG", exif=exif)
    d = decode_image(data, policy=DecodePolicy(draft=200))
    assert d.status == "ok" and (d.width, d.height) == display
    assert d.image.size == (display[0] // 4, display[1] // 4)
    assert decode_image(data).image.size == display  # off by default


def test_draft_leaves_small_jpegs_and_other_formats_whole():
    assert decode_image(_jpeg((300, 200)), policy=DecodePolicy(draft=200)).image.size == (300, 200)
    png = _bytes(Image.new("RGB", (1600, 1000)), "PNG")
    assert decode_image(png, policy=DecodePolicy(draft=200)).image.size == (1600, 1000)


def test_draft_size_is_twice_the_largest_model_input(tmp_path):
    import torch

    from clipvec_tasks.embedder import Embedder
    from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
    from tests.conftest import TINY

    def member(name):
        return load_member(MemberConfig(name, "random"), torch.device("cpu"), "fp32",
                           WeightsConfig(cache_dir=str(tmp_path)))

    assert Embedder([member(TINY)]).draft_size == 128  # a 64-px model
    # torchvision's resnet18 resizes to 256 before its 224 crop
    assert Embedder([member(TINY), member("resnet18")]).draft_size == 512
