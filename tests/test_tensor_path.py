"""The GPU path's pieces, run on the CPU: EXIF orientation, batched resize, stage threads."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clipvec_tasks.jpeg import apply_orientation, decode_jpegs_on_device, jpeg_info
from clipvec_tasks.tensor_preprocess import TensorTransform


def _jpeg(im: Image.Image, orientation: int | None = None, order: str = "big") -> bytes:
    buf = io.BytesIO()
    kw = {"exif": _exif_block(orientation, order)} if orientation is not None else {}
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _exif_block(orientation: int, order: str) -> bytes:
    """An Exif APP1 payload in either TIFF byte order: a Make tag (ASCII, stored after the
    IFD), then Orientation (SHORT)."""
    def u(v: int, n: int) -> bytes:
        return v.to_bytes(n, order)

    make = b"clipvec test camera\x00"
    tail_at = 8 + 2 + 2 * 12 + 4
    ifd = u(2, 2) + u(0x010F, 2) + u(2, 2) + u(len(make), 4) + u(tail_at, 4)
    ifd += u(0x0112, 2) + u(3, 2) + u(1, 4) + u(orientation, 2) + b"\x00\x00" + u(0, 4)
    head = (b"II*\x00" if order == "little" else b"MM\x00*") + u(8, 4)
    return b"Exif\x00\x00" + head + ifd + make


def _asymmetric(w=40, h=24) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:4, :10] = (255, 0, 0)  # a red block in the top-left corner
    arr[-6:, -3:] = (0, 0, 255)  # a blue one bottom-right
    arr[:, :, 1] = np.arange(w, dtype=np.uint8)[None, :] * 5
    return Image.fromarray(arr)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["little", "big"])
def test_orientation_read_from_the_header_and_applied_as_pillow_does(orientation, order):
    data = _jpeg(_asymmetric(), orientation, order)
    info = jpeg_info(data)
    assert info.orientation == orientation and (info.width, info.height) == (40, 24)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert info.display_size == upright.size
    stored = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    turned = apply_orientation(stored.permute(2, 0, 1), orientation)
    np.testing.assert_array_equal(turned.permute(1, 2, 0).numpy(), np.array(upright))


def test_device_decode_turns_images_by_their_orientation():
    blobs = [_jpeg(_asymmetric(), o) for o in (1, 6, 8)] + [_jpeg(_asymmetric())]
    infos = [jpeg_info(b) for b in blobs]
    out = decode_jpegs_on_device(blobs, torch.device("cpu"), [i.orientation for i in infos])
    for b, t, info in zip(blobs, out, infos, strict=True):
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(b)))
        assert tuple(t.shape) == (3, upright.height, upright.width) == (3, *info.display_size[::-1])
        diff = np.abs(t.permute(1, 2, 0).numpy().astype(int) - np.array(upright).astype(int))
        assert diff.mean() < 1.0  # the same pixels, up to the two decoders' rounding


def test_broken_or_missing_exif_leaves_the_image_as_stored():
    plain = _jpeg(_asymmetric())
    assert jpeg_info(plain).orientation == 1
    data = bytearray(_jpeg(_asymmetric(), 6))
    at = data.find(b"Exif\x00\x00") + 6
    data[at:at + 2] = b"XX"  # not a TIFF byte order
    assert jpeg_info(bytes(data)).orientation == 1


def _pil_reference(im: Image.Image, t: TensorTransform) -> np.ndarray:
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    mode = InterpolationMode.BICUBIC if t.interpolation == "bicubic" else InterpolationMode.BILINEAR
    return np.array(CenterCrop(t.crop)(Resize(t.resize, interpolation=mode)(im)))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_batched_resize_matches_pillow_in_mixed_size_groups(interpolation):
    rng = np.random.default_rng(0)
    sizes = [(97, 131), (131, 97), (64, 64), (200, 75), (33, 250), (120, 90), (90, 120)] * 3
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    # mean 0 and std 1/255: the transform's output is then the resized pixels themselves
    t = TensorTransform(40, 32, interpolation, (0.0, 0.0, 0.0), (1 / 255,) * 3)
    tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous() for im in images]
    out = t(tensors, torch.float32, group=4)  # several groups, sorted by size, put back in order
    assert out.shape == (len(images), 3, 32, 32)
    for im, got in zip(images, out, strict=True):
        ref = _pil_reference(im, t).astype(np.float32)
        diff = np.abs(got.permute(1, 2, 0).numpy() - ref)
        # Pillow works in 22-bit fixed point, this in float32: at most an 8-bit step apart,
        # on the few pixels whose value falls next to a rounding boundary
        assert diff.max() <= 1.0 and (diff > 0).mean() < 0.03


_FUSED_CHECK = """
import numpy as np, torch
from clipvec_tasks import resize_kernel
from clipvec_tasks.tensor_preprocess import TensorTransform

rng = np.random.default_rng(1)
# landscape, portrait, square, one Pillow resizes vertical pass first, an upscale
sizes = [(97, 131), (131, 97), (64, 64), (200, 75), (33, 250), (41, 41)]
images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
for kind in ("bicubic", "bilinear"):
    t = TensorTransform(40, 32, kind, (0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    ref = t(images, torch.float32)
    got = resize_kernel.fused_resize(t, images, torch.float32)
    diff = (ref - got).abs()
    level = 1 / (0.26 * 255)  # one 8-bit step, normalised
    assert got.shape == ref.shape and diff.max() <= level * 1.01, (kind, diff.max())
    assert (diff > 1e-4).float().mean() < 0.002, kind  # float sums in another order
print("ok")
"""


def test_groups_respect_count_and_padded_pixel_budget():
    from clipvec_tasks.tensor_preprocess import _groups

    sizes = [(10, 10)] * 5 + [(100, 100), (3000, 4000), (3000, 4000)]
    assert _groups(list(range(8)), sizes, 3, budget=10**9) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # padding [3, 4, 5] to 100x100 is 30,000 pixels; a 12 MP photo goes alone
    assert _groups(list(range(8)), sizes, 64, budget=25_000) == [
        [0, 1, 2, 3, 4], [5], [6], [7]]


def test_pixel_budget_changes_the_groups_not_the_pixels(monkeypatch):
    """Photos far larger than the model input are resized a few at a time (the float copy
    of a padded group stays bounded), with the same result as in one group."""
    import clipvec_tasks.tensor_preprocess as tp

    rng = np.random.default_rng(1)
    sizes = [(300, 400), (400, 300), (80, 60), (250, 250), (60, 90)]
    tensors = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    t = TensorTransform(40, 32, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    whole = t.matmul(tensors, torch.float32)
    monkeypatch.setattr(tp, "GROUP_PIXELS", 130_000)  # about one of the larger images
    assert len(tp._groups(list(range(5)), sizes, 64)) >= 3
    assert torch.equal(t.matmul(tensors, torch.float32), whole)


def test_fused_kernel_matches_the_matrix_products():
    """The GPU's two-launch Triton resize, run in Triton's interpreter on the CPU (a fresh
    process: the interpreter must be chosen before Triton is imported), against the
    batched matrix products, themselves checked against Pillow above."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", _FUSED_CHECK], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_fused_kernel_that_fails_or_disagrees_is_turned_off(monkeypatch):
    """On its first batch the fused path is compared with the matrix products; a kernel
    that raises or disagrees is switched off with a warning and the batch is not lost."""
    from clipvec_tasks import resize_kernel, tensor_preprocess

    t = TensorTransform(40, 32, "bicubic", (0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    images = [torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)]
    monkeypatch.setitem(tensor_preprocess._FUSED, "checked", set())
    for broken in (lambda *a: 1 / 0, lambda t, ims, dt: t.matmul(ims, dt) + 0.5):
        monkeypatch.setitem(tensor_preprocess._FUSED, "ok", True)
        monkeypatch.setattr(resize_kernel, "fused_resize", broken)
        with pytest.warns(UserWarning, match="fused resize kernel is off"):
            assert tensor_preprocess._fused(t, images, torch.float32) is None
        assert tensor_preprocess._FUSED["ok"] is False
    monkeypatch.setitem(tensor_preprocess._FUSED, "ok", True)
    monkeypatch.setattr(resize_kernel, "fused_resize", lambda t, ims, dt: t.matmul(ims, dt))
    assert tensor_preprocess._fused(t, images, torch.float32) is not None
    assert t in tensor_preprocess._FUSED["checked"] and tensor_preprocess._FUSED["ok"]


def test_reader_crops_normalised_match_the_device_resize():
    """Rows the readers resize with Pillow (geometry.pil_crop) and the device only
    normalises hold the values the device's own resize gives."""
    from clipvec_tasks.geometry import pil_crop

    rng = np.random.default_rng(2)
    t = TensorTransform(40, 32, "bicubic", (0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    for h, w in [(97, 131), (200, 75), (64, 64)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        crop = torch.from_numpy(np.array(pil_crop(im, t.spec)))[None]
        got = t.normalize(crop, torch.float32)[0]
        ref = t([torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()], torch.float32)[0]
        diff = (got - ref).abs()
        assert got.shape == ref.shape and diff.max() <= 1.01 / (0.26 * 255)
        assert (diff > 1e-4).float().mean() < 0.03


def test_windows_close_early_on_the_pixels_the_device_will_decode():
    from clipvec_tasks.shard import Prepared, _windows
    from clipvec_tasks.sources import SourceItem

    def row(i, status="ok", size=(4000, 3000), crops=None):
        return Prepared(SourceItem(f"id{i}", f"u{i}", 1, None, None), status,
                        width=size[0], height=size[1], crops=crops)

    rows = [row(0), row(1, "truncated"), row(2), row(3, size=(40, 30)),
            row(4, crops=[np.zeros((2, 2, 3), np.uint8)]), row(5), row(6)]
    # two 12 MP photos fill a 24 MP budget; a failure rides along; reader crops cost nothing
    got = [[p.item.id for p in w] for w in _windows(rows, 256, 24_000_000)]
    assert got == [["id0", "id1", "id2"], ["id3", "id4", "id5", "id6"]]
    assert [len(w) for w in _windows(rows, 3)] == [4, 3]  # by count alone without a budget
