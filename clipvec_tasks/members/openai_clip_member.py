"""OpenAI CLIP members (the ``clip`` package): image tower and CLIP's own transform."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from ..registry import ModelSpec
from ..weights import ResolvedWeights, WeightsRef, expected_hash, fetch_tag, load_state_dict
from .base import NON_PARAMS, ensure_materialized, seeded

# clip.model.CLIP's constructor arguments per architecture (what build_model
# infers from a checkpoint's shapes), used to build seeded random weights
_ARCHS: dict[str, dict[str, Any]] = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, transformer_width=512, transformer_heads=8),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, transformer_width=512, transformer_heads=8),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, transformer_width=768, transformer_heads=12),
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3),
                 vision_width=64, vision_patch_size=None, transformer_width=512,
                 transformer_heads=8),
    "RN101": dict(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3),
                  vision_width=64, vision_patch_size=None, transformer_width=512,
                  transformer_heads=8),
}


def fetch(spec: ModelSpec, ref: WeightsRef, cache_dir: str, mirror: str | None,
          storage_options: dict[str, object] | None) -> str:
    """Download (or find) OpenAI's released file; clip's downloader checks its sha256."""
    import clip

    url = clip.clip._MODELS.get(ref.value)
    if url is None:
        from ..errors import ClipvecError

        raise ClipvecError(
            f"OpenAI CLIP has no weights named '{ref.value}'; it has "
            f"{', '.join(clip.available_models())}."
        )
    relname = f"openai_clip/{os.path.basename(url)}"
    return fetch_tag("openai_clip", spec.arch, ref.value, relname,
                     lambda cache: clip.clip._download(url, cache), cache_dir, mirror, url,
                     storage_options, expected_hash(url))


def random_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """A freshly initialised CLIP's state_dict (seed the RNG first)."""
    import clip

    model = clip.model.CLIP(context_length=77, vocab_size=49408, transformer_layers=12,
                            **_ARCHS[arch])
    return model.state_dict()


def build(spec: ModelSpec, weights: ResolvedWeights) -> tuple[torch.nn.Module, Any, dict]:
    """The image tower (``clip.model.build_model`` from a state_dict) and ``clip``'s transform."""
    import clip

    seeded(weights.ref.seed)
    if weights.path is None:
        model = clip.model.build_model(random_state_dict(spec.arch)).float()
    else:
        sd = load_state_dict(weights.path)
        # built empty on the meta device (no random initialisation to throw away), then
        # the file's tensors assigned: the values build_model itself would copy in
        with torch.device("meta"), warnings.catch_warnings():
            # build_model's own copy into the empty model is a no-op, and says so per key
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
            model = clip.model.build_model(dict(sd))
        model.load_state_dict({k: v for k, v in sd.items() if k not in NON_PARAMS},
                              strict=True, assign=True)
        model = model.float()
        ensure_materialized(model.visual, spec.name)
    size = model.visual.input_resolution
    record = {
        "library": "clip",
        "image_size": [size, size],
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    return model.visual, clip.clip._transform(size), record


def build_text(spec: ModelSpec, weights: ResolvedWeights):
    """The text tower of the same weights: texts -> unnormalised features."""
    import clip

    seeded(weights.ref.seed)
    # built on the CPU, not the meta device: the causal mask is not in checkpoints
    sd = random_state_dict(spec.arch) if weights.path is None else load_state_dict(weights.path)
    model = clip.model.build_model(dict(sd)).float().eval()

    def encode(texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_text(clip.tokenize(texts, truncate=True)).float()

    return encode
