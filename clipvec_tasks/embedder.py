"""An ensemble of members: one decoded image in, one concatenated vector out."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from .members import Member


class Embedder:
    """Members applied in order; their vectors concatenated (no renormalisation).

    Each image is decoded once by the caller; every member then applies its own
    preprocessing to that image.
    """

    def __init__(self, members: list[Member]) -> None:
        if not members:
            raise ValueError("an embedder needs at least one member")
        self.members = members
        self.offsets = [0]
        for m in members[:-1]:
            self.offsets.append(self.offsets[-1] + m.dim)
        self.dim = sum(m.dim for m in members)

    def preprocess(self, image: Image.Image) -> list[torch.Tensor]:
        """Each member's input tensor for ``image``."""
        return [m.preprocess(image) for m in self.members]

    def embed(self, inputs: list[list[torch.Tensor]]) -> np.ndarray:
        """Vectors for a batch: ``inputs[i]`` is ``preprocess`` of image i. float32 [n, dim]."""
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for j, member in enumerate(self.members):
            batch = torch.stack([x[j] for x in inputs])
            parts.append(_encode_splitting(member, batch))
        return torch.cat(parts, dim=1).cpu().numpy()

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def supports_tensors(self) -> bool:
        """Whether every member's preprocessing can run batched on tensors."""
        return all(m.tensor_transform is not None for m in self.members)

    @property
    def draft_size(self) -> int:
        """How far a JPEG may be decoded down (``runtime.jpeg_draft``): both sides at least
        twice the largest size any member resizes to, the margin Pillow's own thumbnail()
        keeps before its antialiased resize (``reducing_gap=2``)."""
        return 2 * max(max([*m.preprocessing.get("resize_size", []),
                            *m.preprocessing["image_size"]]) for m in self.members)

    @property
    def crop_specs(self) -> tuple[Any, ...]:
        """The members' distinct resize/crop specs (tensor path), in member order."""
        if not self.supports_tensors:
            return ()
        return tuple(dict.fromkeys(m.tensor_transform.spec for m in self.members))

    def preprocess_tensors(self, images: list[torch.Tensor], mixed: tuple[Any, ...] | None = None
                           ) -> list[torch.Tensor]:
        """Each member's input batch from uint8 [3, H, W] images already on the device.

        ``mixed`` = (rows, rows of ``images``, rows resized on the CPU, their uint8 crops
        per spec of :attr:`crop_specs`), row indices as device tensors, when readers
        decoded and resized some rows with Pillow: those are only normalised here.
        """
        if mixed is None:
            return [m.tensor_transform(images, m.dtype) for m in self.members]
        n, on_gpu, on_cpu, crops = mixed
        specs = self.crop_specs
        out = []
        for m in self.members:
            t = m.tensor_transform
            x = torch.empty((n, 3, t.crop, t.crop), dtype=m.dtype, device=self.device)
            if images:
                x.index_copy_(0, on_gpu, t(images, m.dtype))
            x.index_copy_(0, on_cpu, t.normalize(crops[specs.index(t.spec)], m.dtype))
            out.append(x)
        return out

    def encode_inputs(self, inputs: list[torch.Tensor]) -> np.ndarray:
        """Vectors from per-member input batches (``preprocess_tensors``). float32 [n, dim]."""
        return self.finish_encode(self.start_encode(inputs))

    def start_encode(self, inputs: list[torch.Tensor]) -> tuple[Any, ...]:
        """Launch the members on ``inputs`` and the copy of their vectors to pinned host
        memory, without waiting: the caller can launch the next batch before
        :meth:`finish_encode` collects this one, so the GPU never idles between them."""
        parts = [_encode_splitting(m, x) for m, x in zip(self.members, inputs, strict=True)]
        out = torch.cat(parts, dim=1)
        if out.device.type != "cuda":
            return (out, None, None)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return (host, done, out)  # ``out`` lives until the copy has read it

    @staticmethod
    def finish_encode(handle: tuple[Any, ...]) -> np.ndarray:
        """The vectors of a :meth:`start_encode`, once they have reached the host."""
        host, done, _ = handle
        if done is not None:
            done.synchronize()
        return host.numpy()

    def describe(self) -> dict[str, Any]:
        """The model configuration recorded in the dataset."""
        return {
            "dim": self.dim,
            "members": [m.describe(o) for m, o in zip(self.members, self.offsets, strict=True)],
        }

    def fingerprint(self) -> str:
        """Identity of what the vectors mean: equal fingerprints give comparable vectors."""
        return model_fingerprint(self.describe())


def model_fingerprint(description: dict[str, Any]) -> str:
    """Hash of what decides the vectors' meaning: each member's model, weights, normalising.

    Preprocessing follows from the model and its registry entry, so it is not hashed.
    """
    keep = [
        {
            "family": m["family"], "arch": m["arch"], "dim": m["dim"],
            "normalize": m["normalize"],
            "weights": {k: v for k, v in m["weights"].items() if k != "source"},
        }
        for m in description["members"]
    ]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _encode_splitting(member: Member, batch: torch.Tensor) -> torch.Tensor:
    """Encode, halving the batch on out-of-memory instead of losing it."""
    try:
        return member.encode(batch)
    except torch.OutOfMemoryError:
        if batch.shape[0] == 1:
            raise
        torch.cuda.empty_cache()
        half = batch.shape[0] // 2
        return torch.cat([_encode_splitting(member, batch[:half]),
                          _encode_splitting(member, batch[half:])])
