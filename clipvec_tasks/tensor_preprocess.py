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

import warnings
from dataclasses import dataclass

import torch

_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _filter(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.abs()
    if kind == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # Pillow's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resample_weights(in_sizes: torch.Tensor, out_sizes: torch.Tensor, starts: torch.Tensor,
                     length: int, max_in: int, kind: str) -> torch.Tensor:
    """[B, length, max_in] weights: rows ``starts..starts+length`` of Pillow's resize of
    ``in_sizes`` to ``out_sizes`` (Resample.c ``precompute_coeffs``), zero past each input."""
    dev = in_sizes.device
    ins = in_sizes.to(torch.float32)[:, None, None]
    scale = ins / out_sizes.to(torch.float32)[:, None, None]
    fscale = scale.clamp(min=1.0)
    support = _SUPPORT[kind] * fscale
    out_idx = (starts[:, None] + torch.arange(length, device=dev)[None, :]).to(torch.float32)
    center = (out_idx[:, :, None] + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), ins)
    x = torch.arange(max_in, device=dev, dtype=torch.float32)[None, None, :]
    w = _filter((x - center + 0.5) / fscale, kind) * ((x >= xmin) & (x < xmax))
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


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

        Images are resized in groups of similar height, so that padding each group
        to its own largest image wastes little of the matrix products' work.
        """
        if len(images) <= group:
            return self._resize(images, dtype)
        order = sorted(range(len(images)), key=lambda i: (images[i].shape[1], images[i].shape[2]))
        out = torch.empty((len(images), 3, self.crop, self.crop), dtype=dtype,
                          device=images[0].device)
        for s in range(0, len(order), group):
            idx = order[s:s + group]
            out[torch.tensor(idx, device=out.device)] = self._resize([images[i] for i in idx],
                                                                     dtype)
        return out

    def _resize(self, images: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        dev = images[0].device
        h_list, w_list = [im.shape[1] for im in images], [im.shape[2] for im in images]
        hs = torch.tensor(h_list, device=dev)
        ws = torch.tensor(w_list, device=dev)
        short, long_ = torch.minimum(hs, ws), torch.maximum(hs, ws)
        new_long = torch.floor(self.resize * long_.double() / short.double()).long()
        new_h = torch.where(hs <= ws, torch.full_like(hs, self.resize), new_long)
        new_w = torch.where(hs <= ws, new_long, torch.full_like(ws, self.resize))
        top = torch.round((new_h - self.crop).double() / 2.0).long()
        left = torch.round((new_w - self.crop).double() / 2.0).long()
        hmax, wmax = max(h_list), max(w_list)  # from host lists: no device sync
        rh = resample_weights(hs, new_h, top, self.crop, hmax, self.interpolation)
        rw = resample_weights(ws, new_w, left, self.crop, wmax, self.interpolation)
        batch = _pad(images, hmax, wmax)  # [B, 3, H, W] float32
        b = batch.shape[0]
        # horizontal pass first, rounded to 8 bits as Pillow does between passes
        tmp = torch.bmm(batch.reshape(b, 3 * hmax, wmax), rw.transpose(1, 2))
        tmp = tmp.round_().clamp_(0, 255).reshape(b, 3, hmax, self.crop)
        out = torch.einsum("bjh,bchi->bcji", rh, tmp).round_().clamp_(0, 255)
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1) * 255.0
        return ((out - mean) / std).to(dtype)


def _pad(images: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """One zero-padded float batch [B, 3, h, w] (a nested tensor: two kernels, not B)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        nested = torch.nested.nested_tensor(images, layout=torch.strided)
        padded = nested.to_padded_tensor(0, output_size=(len(images), 3, h, w))
    return padded.to(torch.float32)

