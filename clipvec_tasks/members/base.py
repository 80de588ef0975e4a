"""A loaded ensemble member: its image tower, its preprocessing, its precision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..registry import ModelSpec
from ..weights import ResolvedWeights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# keys that OpenAI's checkpoints carry beside the parameters
NON_PARAMS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Member:
    """One model of an ensemble, ready to embed.

    ``preprocess`` is the upstream library's own transform (PIL -> float tensor),
    so embeddings match the reference implementation; ``tower`` maps a batch
    of those tensors to features.
    """

    spec: ModelSpec
    tower: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    preprocessing: dict[str, Any]
    weights: ResolvedWeights
    device: torch.device
    dtype: torch.dtype
    normalize: bool = True
    compile: bool = False
    dim: int = field(init=False)
    tensor_transform: Any = field(init=False, default=None)
    channels_last: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        from ..tensor_preprocess import TensorTransform

        self.dim = self.spec.dim
        self.tensor_transform = TensorTransform.from_record(self.preprocessing)
        self.tower.eval().requires_grad_(False)
        self.tower.to(device=self.device, dtype=self.dtype)
        # convolutional towers run faster on GPUs with NHWC tensors (cuDNN's tensor-core path)
        self.channels_last = self.device.type == "cuda" and _is_convolutional(self.tower)
        if self.channels_last:
            self.tower.to(memory_format=torch.channels_last)
        if self.compile:
            self.tower = torch.compile(self.tower, dynamic=True)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch: float32 [n, dim], unit-norm unless disabled."""
        x = batch.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.tower(x).float()
        if out.shape[-1] != self.dim:
            raise RuntimeError(f"{self.spec.name} produced dim {out.shape[-1]}, not {self.dim}")
        return F.normalize(out, dim=-1) if self.normalize else out

    def describe(self, offset: int) -> dict[str, Any]:
        """What the dataset metadata records about this member."""
        return {
            **self.spec.describe(),
            "weights": self.weights.describe(),
            "offset": offset,
            "normalize": self.normalize,
            "preprocessing": self.preprocessing,
        }


def _is_convolutional(module: torch.nn.Module) -> bool:
    """True for towers built of many 2-D convolutions (ResNets, ConvNeXts), not for ViTs,
    whose one convolution is the patch embedding."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules()) > 4


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model constructors draw from it) and return a fork."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def ensure_materialized(module: torch.nn.Module, name: str) -> None:
    """Fail loudly if a module built on the meta device kept a tensor without data."""
    empty = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if empty:
        raise RuntimeError(f"{name}: the checkpoint left {', '.join(empty[:5])} without data")
