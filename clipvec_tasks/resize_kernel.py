"""The batched resize + center crop + normalise as two Triton kernel launches per batch.

The same arithmetic as :class:`tensor_preprocess.TensorTransform`'s matrix products
(Pillow's banded filter weights in 22-bit fixed point, Pillow's pass order, 8-bit
rounding after each pass), but a whole batch of differently sized images goes
through each pass in one launch: no padding, no per-group kernels, a handful of
launches per batch instead of hundreds. On a GPU the torch version is bound by
launching its kernels from Python, not by the GPU (``bench/gpu_profile.py``).

Images are read from one flat uint8 buffer (the batch concatenated) at per-image
offsets and strides, so one kernel serves both passes and both pass orders:

- pass 1 resamples along the first axis Pillow resizes (x, or y when Pillow goes
  vertical first) into an 8-bit buffer of [3, rows, crop] per image;
- pass 2 resamples that buffer along the other axis, normalises, and writes the
  [3, crop, crop] model input in the model's dtype.

Triton is imported lazily; tests run these kernels in Triton's interpreter on the
CPU (``TRITON_INTERPRET=1``), the torch version being the reference.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

BLOCK_ROWS = 16


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    # (no argument may be called "params": Triton's generated launcher binds that name)
    def resample_pass(src, geometry, first, weights, dst, taps, m0, m1, m2, s0, s1, s2,
                      LENGTH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
                      NORMALIZE: tl.constexpr):
        # geometry[b]: src offset, channel/row/axis strides, rows, axis length,
        #            dst offset, channel/row/column strides
        b = tl.program_id(0)
        p = geometry + b * 10
        rows = tl.load(p + 4)
        r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        if tl.program_id(1) * BLOCK_R < rows:
            src_off, src_cs, src_rs = tl.load(p), tl.load(p + 1), tl.load(p + 2)
            src_xs, axis_len = tl.load(p + 3), tl.load(p + 5)
            dst_off, dst_cs, dst_rs, dst_xs = (tl.load(p + 6), tl.load(p + 7), tl.load(p + 8),
                                               tl.load(p + 9))
            j = tl.arange(0, BLOCK_L)
            jmask = j < LENGTH
            mask = (r < rows)[:, None] & jmask[None, :]
            start = tl.load(first + b * LENGTH + j, mask=jmask, other=0)
            for c in tl.static_range(3):
                acc = tl.zeros((BLOCK_R, BLOCK_L), dtype=tl.float32)
                for k in range(taps):  # a loop bound, not a constant: no recompiles
                    w = tl.load(weights + (b * LENGTH + j) * taps + k, mask=jmask, other=0.0)
                    # taps past the input's end weigh 0; their address stays inside it
                    pos = tl.minimum(start + k, axis_len - 1)
                    addr = src_off + c * src_cs + r[:, None] * src_rs + pos[None, :] * src_xs
                    v = tl.load(src + addr, mask=mask, other=0).to(tl.float32)
                    acc += v * w[None, :]
                acc = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)
                if NORMALIZE:
                    if c == 0:
                        acc = (acc - m0) / s0
                    elif c == 1:
                        acc = (acc - m1) / s1
                    else:
                        acc = (acc - m2) / s2
                out = dst_off + c * dst_cs + r[:, None] * dst_rs + j[None, :] * dst_xs
                tl.store(dst + out, acc.to(dst.dtype.element_ty), mask=mask)

    return resample_pass


def fused_resize(t: Any, images: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``t`` (a TensorTransform) applied to uint8 [3, H, W] images in two kernel launches."""
    from .tensor_preprocess import band_weights, max_taps, upload

    dev, n, crop = images[0].device, len(images), t.crop
    src = torch.cat([im.reshape(-1) for im in images])
    p1, p2, axes1, axes2 = [], [], [], []
    src_off = tmp_off = 0
    for b, im in enumerate(images):
        h, w = int(im.shape[1]), int(im.shape[2])
        new_h, new_w, top, left, v_first = t.geometry(h, w)
        y_axis, x_axis = (h, new_h, top), (w, new_w, left)
        if v_first:  # rows are the image's columns; resample along y first
            rows1, p1_row, p1_axis, axes1_b, axes2_b = w, 1, w, y_axis, x_axis
            d2_row, d2_col = crop, 1  # pass 2's rows are output y, its axis output x
        else:
            rows1, p1_row, p1_axis, axes1_b, axes2_b = h, w, 1, x_axis, y_axis
            d2_row, d2_col = 1, crop
        p1.append((src_off, h * w, p1_row, p1_axis, rows1, axes1_b[0],
                   tmp_off, rows1 * crop, crop, 1))
        p2.append((tmp_off, rows1 * crop, 1, crop, crop, rows1,
                   b * 3 * crop * crop, crop * crop, d2_row, d2_col))
        axes1.append(axes1_b)
        axes2.append(axes2_b)
        src_off += 3 * h * w
        tmp_off += 3 * rows1 * crop
    taps = max(max_taps([a[0] for a in axes1 + axes2], [a[1] for a in axes1 + axes2],
                        t.interpolation), 1)
    host = torch.tensor([p1, p2], dtype=torch.int64)  # [2, n, 10]: each pass's params
    axes = torch.tensor([axes1, axes2], dtype=torch.int64)  # [2, n, 3]: in, out, start
    host, axes = upload(host, dev), upload(axes, dev)
    first1, w1 = band_weights(axes[0, :, 0], axes[0, :, 1], axes[0, :, 2], crop, taps,
                              t.interpolation)
    first2, w2 = band_weights(axes[1, :, 0], axes[1, :, 1], axes[1, :, 2], crop, taps,
                              t.interpolation)
    tmp = torch.empty(tmp_off, dtype=torch.uint8, device=dev)
    out = torch.empty((n, 3, crop, crop), dtype=dtype, device=dev)
    kernel = _kernel()
    block_l = 1 << (crop - 1).bit_length()
    mean = [255.0 * m for m in t.mean]
    std = [255.0 * s for s in t.std]
    max_rows = max(p[4] for p in p1)
    kernel[(n, -(-max_rows // BLOCK_ROWS))](
        src, host[0], first1, w1, tmp, taps, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0,
        LENGTH=crop, BLOCK_R=BLOCK_ROWS, BLOCK_L=block_l, NORMALIZE=False, num_warps=8)
    kernel[(n, -(-crop // BLOCK_ROWS))](
        tmp, host[1], first2, w2, out, taps, *mean, *std,
        LENGTH=crop, BLOCK_R=BLOCK_ROWS, BLOCK_L=block_l, NORMALIZE=True, num_warps=8)
    return out
