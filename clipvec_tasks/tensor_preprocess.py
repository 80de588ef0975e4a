"""Batched resize + center-crop + normalise on tensors (GPU), matching Pillow's resampling.

Pillow resizes with a separable filter whose support widens with the
downscale factor (its antialiasing): each output pixel is a weighted sum of a
window of input pixels. Those weights form a matrix per image and axis, so a
whole batch of differently sized images is resized by two batched matrix
products, center crop folded in, with Pillow's rounding to 8 bits after each
pass. This replaces per-image resize kernels (the "naive GPU path") and keeps
vectors within the fidelity bound of the upstream PIL transforms.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .geometry import CropSpec, resize_crop

_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _filter(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.abs()
    if kind == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # Pillow's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def band_weights(in_sizes: torch.Tensor, out_sizes: torch.Tensor, starts: torch.Tensor,
                 length: int, taps: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's resampling weights (Resample.c ``precompute_coeffs``) for output pixels
    ``starts..starts+length`` of a resize of ``in_sizes`` to ``out_sizes``, in their band:
    (first input pixel [B, length] int64, weights [B, length, taps] float32).

    Weights are in Pillow's 22-bit fixed point (``normalize_coeffs_8bpc``); taps past
    an input's end have weight 0.
    """
    dev = in_sizes.device
    ins = in_sizes.to(torch.float32)[:, None, None]
    scale = ins / out_sizes.to(torch.float32)[:, None, None]
    fscale = scale.clamp(min=1.0)
    support = _SUPPORT[kind] * fscale
    out_idx = (starts[:, None] + torch.arange(length, device=dev)[None, :]).to(torch.float32)
    center = (out_idx[:, :, None] + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), ins)
    x = xmin + torch.arange(taps, device=dev, dtype=torch.float32)[None, None, :]
    w = _filter((x - center + 0.5) / fscale, kind) * (x < xmax)
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total == 0, torch.ones_like(total), total)
    scaled = w * _FIXED
    w = torch.where(scaled < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5)) / _FIXED
    return xmin[:, :, 0].long(), w


def resample_weights(in_sizes: torch.Tensor, out_sizes: torch.Tensor, starts: torch.Tensor,
                     length: int, max_in: int, kind: str, taps: int | None = None) -> torch.Tensor:
    """[B, length, max_in] dense weights (see :func:`band_weights`), zero past each input.

    ``taps`` is Pillow's ``ksize`` over the batch (pass it from the host, else it is
    computed here, which waits for the device): the weights are computed in their band,
    then scattered, so the work grows with the taps rather than with the image width.
    """
    if taps is None:
        taps = max_taps(in_sizes.tolist(), out_sizes.tolist(), kind)
    first, w = band_weights(in_sizes, out_sizes, starts, length, taps, kind)
    x = first[:, :, None] + torch.arange(taps, device=first.device)[None, None, :]
    dense = torch.zeros((w.shape[0], length, max_in), dtype=torch.float32, device=w.device)
    # taps past an input's end carry weight 0: adding them anywhere changes nothing
    return dense.scatter_add_(2, x.clamp_(max=max_in - 1), w)


def max_taps(in_sizes: list[int], out_sizes: list[int], kind: str) -> int:
    """The most input pixels any output pixel draws on (Pillow's ``ksize``), over a batch."""
    return max(int(math.ceil(_SUPPORT[kind] * max(i / o, 1.0))) * 2 + 1
               for i, o in zip(in_sizes, out_sizes, strict=True))


_FIXED = float(1 << 22)


@dataclass(frozen=True, slots=True)
class TensorTransform:
    """Resize the short side to ``resize``, center-crop ``crop``, normalise (as torchvision's
    Resize(int) + CenterCrop + ToTensor + Normalize on a PIL image)."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_record(cls, rec: dict) -> TensorTransform | None:
        """From a member's preprocessing record; None when the record has no tensor equivalent."""
        interp = rec.get("interpolation")
        if interp not in _SUPPORT or rec.get("resize_mode", "shortest") != "shortest":
            return None
        crop = rec["image_size"][0]
        if rec["image_size"][0] != rec["image_size"][1]:
            return None
        resize = rec.get("resize_size", [crop])[0]
        return cls(int(resize), int(crop), interp, tuple(rec["mean"]), tuple(rec["std"]))

    def __call__(self, images: list[torch.Tensor], dtype: torch.dtype,
                 group: int = 64) -> torch.Tensor:
        """uint8 [3, H, W] images (any sizes, one device) -> normalised [B, 3, crop, crop].

        With ``CLIPVEC_FUSED_RESIZE=1``, a GPU runs this as two fused Triton kernel
        launches (:mod:`resize_kernel`, checked against :meth:`matmul` on its first
        batch). Otherwise images are resized in groups of similar size, so that padding
        each group to its own largest image wastes little of the matrix products' work.
        Nothing here waits for the device: the geometry is worked out on the host and
        sent in one pinned, non-blocking copy, so the caller's thread runs ahead.
        """
        dev = images[0].device
        if dev.type == "cuda" and _FUSED["ok"]:
            fused = _fused(self, images, dtype)
            if fused is not None:
                return fused
        return self.matmul(images, dtype, group)

    def matmul(self, images: list[torch.Tensor], dtype: torch.dtype,
               group: int = 64) -> torch.Tensor:
        """The transform as batched matrix products, in groups of similar size."""
        dev = images[0].device
        n = len(images)
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        geo = [self.geometry(h, w) for h, w in sizes]
        order = sorted(range(n), key=lambda i: (geo[i][4], sizes[i]))
        # groups of similar sizes, each running its two passes in one order
        groups = [g for v in (False, True)
                  for g in _groups([i for i in order if geo[i][4] == v], sizes, group)]
        geometry = upload(torch.tensor([(*sizes[i], *geo[i][:4], i) for i in order],
                                       dtype=torch.int64), dev)
        hs, ws, new_h, new_w, top, left, pos = geometry.unbind(1)
        hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
        rows = [geo[i] for i in order]
        rh_all = resample_weights(hs, new_h, top, self.crop, hmax, self.interpolation,
                                  max_taps([sizes[i][0] for i in order], [g[0] for g in rows],
                                           self.interpolation))
        rw_all = resample_weights(ws, new_w, left, self.crop, wmax, self.interpolation,
                                  max_taps([sizes[i][1] for i in order], [g[1] for g in rows],
                                           self.interpolation))
        mean, std = _constants(self.mean, self.std, dev)
        out = torch.empty((n, 3, self.crop, self.crop), dtype=dtype, device=dev)
        s = 0
        for idx in groups:
            e = s + len(idx)
            gh, gw = max(sizes[i][0] for i in idx), max(sizes[i][1] for i in idx)
            pixels = self._resample(_pad([images[i] for i in idx], gh, gw), rh_all[s:e, :, :gh],
                                    rw_all[s:e, :, :gw], vertical_first=geo[idx[0]][4])
            out.index_copy_(0, pos[s:e], ((pixels - mean) / std).to(dtype))
            s = e
        return out

    @property
    def spec(self) -> CropSpec:
        """The pixel part (resize, crop, filter): what CPU readers can do with Pillow."""
        return CropSpec(self.resize, self.crop, self.interpolation)

    def normalize(self, crops: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 [n, crop, crop, 3] crops already resized (by Pillow, in reader processes)
        -> normalised [n, 3, crop, crop]: the same values the resize path produces."""
        mean, std = _constants(self.mean, self.std, crops.device)
        return ((crops.permute(0, 3, 1, 2).float() - mean) / std).to(dtype)

    def geometry(self, h: int, w: int) -> tuple[int, int, int, int, bool]:
        """(resized height, resized width, crop top, crop left, vertical pass first) for an
        h x w image, as torchvision's Resize(int) and CenterCrop and Pillow compute them."""
        new_h, new_w, top, left = resize_crop(h, w, self.resize, self.crop)
        return new_h, new_w, top, left, _vertical_first(h, w, new_h, new_w)

    def _resample(self, batch: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor,
                  vertical_first: bool) -> torch.Tensor:
        """[B, 3, H, W] float -> [B, 3, crop, crop] float in 0..255: Pillow's two passes in
        Pillow's order, rounded to 8 bits after each as Pillow does."""
        b, _, h, w = batch.shape
        if vertical_first:
            tmp = _to_8bit(torch.einsum("bjh,bchw->bcjw", rh, batch))
            out = torch.bmm(tmp.reshape(b, 3 * self.crop, w), rw.transpose(1, 2))
            return _to_8bit(out.reshape(b, 3, self.crop, self.crop))
        tmp = _to_8bit(torch.bmm(batch.reshape(b, 3 * h, w), rw.transpose(1, 2)))
        return _to_8bit(torch.einsum("bjh,bchi->bcji", rh, tmp.reshape(b, 3, h, self.crop)))


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory, without waiting for it
    (a copy from pageable memory would wait for the stream's earlier work)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Pillow's rounding of a pass's result: halves up, then clipped to 0..255 (in place)."""
    return x.add_(0.5).floor_().clamp_(0, 255)


# the most padded pixels one group resizes at once: its float32 copy stays under ~0.8 GB
# whatever the photos' size (64 web images make ~16 M; one 12 MP photo 12 M)
GROUP_PIXELS = 1 << 26


def _groups(order: list[int], sizes: list[tuple[int, int]], n: int,
            budget: int | None = None) -> list[list[int]]:
    """``order`` (indices sorted by size) cut into runs of at most ``n`` images whose
    padding to the run's largest height and width stays within ``budget`` pixels
    (default :data:`GROUP_PIXELS`; a run of one image may exceed it: that image needs
    what it needs)."""
    budget = budget or GROUP_PIXELS
    groups: list[list[int]] = []
    run: list[int] = []
    h = w = 0
    for i in order:
        gh, gw = max(h, sizes[i][0]), max(w, sizes[i][1])
        if run and (len(run) == n or gh * gw * (len(run) + 1) > budget):
            groups.append(run)
            run, gh, gw = [], sizes[i][0], sizes[i][1]
        run.append(i)
        h, w = gh, gw
    if run:
        groups.append(run)
    return groups


def _pillow_runs_vertical_first() -> bool:
    """Whether this Pillow resizes a much-shortened image vertical pass first (Pillow 12+
    does, when the height shrinks by over twice what the width does; earlier versions
    always went horizontal first). Found by trying: a 200x75 noise image to 40x106 gives
    different pixels in each order."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (200, 75), dtype=np.uint8))
    both = np.asarray(im.resize((40, 106), Image.Resampling.BICUBIC))
    v_first = im.resize((75, 106), Image.Resampling.BICUBIC).resize((40, 106),
                                                                    Image.Resampling.BICUBIC)
    return bool((both == np.asarray(v_first)).all())


_PILLOW_VERTICAL_FIRST = _pillow_runs_vertical_first()


def _vertical_first(h: int, w: int, new_h: int, new_w: int) -> bool:
    return _PILLOW_VERTICAL_FIRST and h - new_h > 0 and h - new_h > 2 * (w - new_w)


# the fused Triton kernels (resize_kernel) on GPUs: opt-in until measured on one
_FUSED: dict[str, Any] = {"ok": os.environ.get("CLIPVEC_FUSED_RESIZE", "0") == "1",
                          "checked": set()}


def _fused(t: TensorTransform, images: list[torch.Tensor], dtype: torch.dtype
           ) -> torch.Tensor | None:
    """The fused kernels' result, or None to use the matrix products. The first batch of
    each transform is also computed by the matrix products and compared: a kernel that
    cannot compile here, or disagrees, is turned off with a warning."""
    try:
        from .resize_kernel import fused_resize

        if t in _FUSED["checked"]:
            return fused_resize(t, images, dtype)
        out = fused_resize(t, images, torch.float32)  # compared in float32, then cast
        ref = t.matmul(images, torch.float32)
        level = 1.0 / (255.0 * min(t.std))  # one 8-bit step, normalised
        diff = (out - ref).abs()
        if float(diff.max()) > 1.01 * level or float((diff > 1e-4).float().mean()) > 0.01:
            raise RuntimeError("its output differs from the matrix products by up to "
                               f"{float(diff.max()):.4f}")
        _FUSED["checked"].add(t)
        return out.to(dtype)
    except Exception as e:
        _FUSED["ok"] = False
        warnings.warn(f"clipvec: the fused resize kernel is off ({type(e).__name__}: {e}); "
                      "using batched matrix products", stacklevel=3)
        return None


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(mean: tuple, std: tuple, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std scaled to 0..255, made once per device (a copy to the GPU would wait)."""
    key = (mean, std, str(dev))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255.0,
                           torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255.0)
    return _CONSTANTS[key]


def _pad(images: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """One zero-padded float batch [B, 3, h, w] (a nested tensor: two kernels, not B)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        nested = torch.nested.nested_tensor(images, layout=torch.strided)
        padded = nested.to_padded_tensor(0, output_size=(len(images), 3, h, w))
    return padded.to(torch.float32)

