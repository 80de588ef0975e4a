"""torchvision members: a classifier's penultimate features, with its DEFAULT weights' transform."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch

from ..registry import ModelSpec
from ..weights import ResolvedWeights, WeightsRef, expected_hash, fetch_tag, load_state_dict
from .base import ensure_materialized, seeded


def _weights_enum(arch: str):
    from torchvision.models import get_model_weights

    return get_model_weights(arch)


def _last_linear(model: torch.nn.Module) -> tuple[str, torch.nn.Linear] | None:
    """The classification head: the last Linear layer in registration order."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            found = (name, module)
    return found


@cache
def describe_torchvision_arch(name: str) -> tuple[str, int, int] | None:
    """(DEFAULT weights tag, feature dim, input size) of a torchvision classifier, or None.

    Built on the meta device, so no memory or time is spent on parameters.
    """
    import torchvision
    from torchvision.models import get_model

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    with torch.device("meta"):
        model = get_model(name, weights=None)
    head = _last_linear(model)
    if head is None:
        return None
    default = _weights_enum(name).DEFAULT
    crop = default.transforms().crop_size
    return default.name, head[1].in_features, int(crop[0])


def fetch(spec: ModelSpec, ref: WeightsRef, cache_dir: str, mirror: str | None,
          storage_options: dict[str, object] | None) -> str:
    """Download (or find) the weights through torchvision's own hub loader (hash-checked)."""
    from torch.hub import download_url_to_file

    enum = _weights_enum(spec.arch)
    try:
        w = enum[ref.value]
    except KeyError:
        from ..errors import ClipvecError

        raise ClipvecError(
            f"torchvision has no weights '{ref.value}' for {spec.arch}; it has "
            f"{', '.join(m.name for m in enum)}."
        ) from None
    fname = os.path.basename(w.url)

    def download(cache: str) -> str:
        dest = os.path.join(cache, "torchvision", fname)
        if not os.path.isfile(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            # torchvision names files <name>-<sha256 prefix>.pth; hash_prefix verifies it
            prefix = fname.rsplit("-", 1)[-1].split(".")[0]
            download_url_to_file(w.url, dest, hash_prefix=prefix, progress=True)
        return dest

    return fetch_tag("torchvision", spec.arch, ref.value, f"torchvision/{fname}", download,
                     cache_dir, mirror, w.url, storage_options, expected_hash(w.url))


def build(spec: ModelSpec, weights: ResolvedWeights) -> tuple[torch.nn.Module, Any, dict]:
    """The classifier with its head replaced by Identity, and its weights' transform."""
    from torchvision.models import get_model

    seeded(weights.ref.seed)
    if weights.path is None:
        model = get_model(spec.arch, weights=None)
    else:  # skip random initialisation: build empty, then assign the file's tensors
        with torch.device("meta"):
            model = get_model(spec.arch, weights=None)
        model.load_state_dict(load_state_dict(weights.path), strict=True, assign=True)
        ensure_materialized(model, spec.name)
    head = _last_linear(model)
    assert head is not None, spec.arch
    model.set_submodule(head[0], torch.nn.Identity())
    tag = weights.ref.value if weights.ref.kind == "tag" else spec.weights
    transform = _weights_enum(spec.arch)[tag].transforms()
    record = {
        "library": "torchvision",
        "image_size": [int(transform.crop_size[0])] * 2,
        "resize_size": [int(s) for s in transform.resize_size],
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation.value,
        "head_removed": head[0],
    }
    return model, transform, record
