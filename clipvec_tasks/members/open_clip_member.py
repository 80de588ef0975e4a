"""OpenCLIP members (open_clip_torch): the image tower and its pretrained config's preprocessing."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from ..registry import ModelSpec
from ..weights import ResolvedWeights, WeightsRef, expected_hash, fetch_tag, load_state_dict
from .base import NON_PARAMS, ensure_materialized, seeded


def _pretrained_cfg(arch: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = [t for a, t in open_clip.list_pretrained() if a == arch]
        from ..errors import ClipvecError

        raise ClipvecError(
            f"OpenCLIP has no pretrained tag '{tag}' for {arch}; its tags are: {', '.join(known)}."
        )
    return cfg


def fetch(spec: ModelSpec, ref: WeightsRef, cache_dir: str, mirror: str | None,
          storage_options: dict[str, object] | None) -> str:
    """Download (or find) the weights file of tag ``ref.value`` for ``spec``."""
    import open_clip

    cfg = _pretrained_cfg(spec.arch, ref.value)
    url = cfg.get("url") or ""
    fname = os.path.basename(url) if url else "open_clip_pytorch_model.bin"
    probe = url or "https://huggingface.co/"
    return fetch_tag(
        "open_clip", spec.arch, ref.value, f"open_clip/{spec.arch}/{ref.value}/{fname}",
        lambda cache: open_clip.download_pretrained(cfg, cache_dir=cache),
        cache_dir, mirror, probe, storage_options, expected_hash(url),
    )


def build(spec: ModelSpec, weights: ResolvedWeights) -> tuple[torch.nn.Module, Any, dict]:
    """The image tower, the upstream preprocess, and a record of that preprocessing.

    Preprocessing (mean, std, interpolation, resize mode) follows the registry
    tag's pretrained config, whatever the weights' source.
    """
    import open_clip

    tag = weights.ref.value if weights.ref.kind == "tag" else spec.weights
    # a model without a known tag (custom, tests) gets OpenCLIP's defaults
    pcfg = _pretrained_cfg(spec.arch, tag) if weights.ref.kind == "tag" \
        else open_clip.get_pretrained_cfg(spec.arch, tag) or {}
    seeded(weights.ref.seed)
    empty = weights.path is not None
    logging.disable(logging.WARNING)  # open_clip warns on root that no weights were loaded
    try:
        # with a file to load, skip random initialisation (a second for ViT-B/32): build on
        # the meta device (open_clip's device= alone builds on the CPU, then moves), assign
        with torch.device("meta") if empty else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch,
                pretrained=None,
                image_mean=pcfg.get("mean"),
                image_std=pcfg.get("std"),
                image_interpolation=pcfg.get("interpolation"),
                image_resize_mode=pcfg.get("resize_mode"),
                device="meta" if empty else "cpu",
            )
    finally:
        logging.disable(logging.NOTSET)
    if weights.path is not None:
        sd = {k: v for k, v in load_state_dict(weights.path).items() if k not in NON_PARAMS}
        model.load_state_dict(sd, strict=True, assign=True)
        ensure_materialized(model.visual, spec.name)
    size = model.visual.image_size
    record = {
        "library": "open_clip",
        "image_size": list(size) if isinstance(size, tuple) else [size, size],
        "mean": list(pcfg.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        "std": list(pcfg.get("std") or open_clip.OPENAI_DATASET_STD),
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "resize_mode": pcfg.get("resize_mode", "shortest"),
    }
    return model.visual, preprocess, record


def build_text(spec: ModelSpec, weights: ResolvedWeights):
    """The text tower of the same weights: texts -> unnormalised features."""
    import open_clip

    seeded(weights.ref.seed)
    logging.disable(logging.WARNING)
    try:
        # built on the CPU, not the meta device: the causal mask is not in checkpoints
        model = open_clip.create_model(spec.arch, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    if weights.path is not None:
        sd = {k: v for k, v in load_state_dict(weights.path).items() if k not in NON_PARAMS}
        model.load_state_dict(sd, strict=True)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    model.eval()

    def encode(texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_text(tokenizer(texts)).float()

    return encode
