"""Model members by family, and the one function that loads any of them."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import ClipvecError
from ..registry import ModelSpec, get_spec
from ..weights import (
    DEFAULT_CACHE_DIR,
    ResolvedWeights,
    WeightsRef,
    fetch_checkpoint,
    parse_pretrained,
    sha256_file,
)
from .base import DTYPES, Member


@dataclass(frozen=True, slots=True)
class MemberConfig:
    """One ``model.members[N]`` entry."""

    name: str
    pretrained: str | None = None
    normalize: bool = True
    seed: int = 0


@dataclass(frozen=True, slots=True)
class WeightsConfig:
    """The ``weights`` config group: where tagged weights are cached and mirrored."""

    cache_dir: str = DEFAULT_CACHE_DIR
    mirror: str | None = None
    storage_options: tuple[tuple[str, object], ...] = ()


def family_module(name: str) -> ModuleType:
    from . import open_clip_member, openai_clip_member, torchvision_member

    return {
        "open_clip": open_clip_member,
        "openai_clip": openai_clip_member,
        "torchvision": torchvision_member,
    }[name]


_FETCH_LOCK = threading.Lock()  # one download of a file at a time in this process


def resolve_weights(spec: ModelSpec, ref: WeightsRef, cfg: WeightsConfig) -> ResolvedWeights:
    """Make a member's weights available locally (download, mirror, checkpoint) and hash them."""
    opts = dict(cfg.storage_options)
    if ref.kind == "random":
        return ResolvedWeights(ref, None, None)
    with _FETCH_LOCK:
        if ref.kind == "checkpoint":
            path = fetch_checkpoint(ref.value, cfg.cache_dir, opts)
        else:
            path = family_module(spec.family).fetch(spec, ref, cfg.cache_dir, cfg.mirror, opts)
        return ResolvedWeights(ref, path, sha256_file(path, cache_dir=cfg.cache_dir))


def load_member(
    member: MemberConfig, device: torch.device, precision: str, weights: WeightsConfig,
    compile: bool = False,
) -> Member:
    """Build one member on ``device`` at ``precision`` (fp32/bf16/fp16), optionally compiled."""
    spec = get_spec(member.name)
    ref = parse_pretrained(member.pretrained, spec.weights, member.seed)
    resolved = resolve_weights(spec, ref, weights)
    try:
        tower, preprocess, record = family_module(spec.family).build(spec, resolved)
    except RuntimeError as e:
        if "state_dict" in str(e) or "size mismatch" in str(e):
            raise ClipvecError(
                f"The checkpoint '{ref.value}' does not fit {spec.name} ({spec.family} "
                f"{spec.arch}): {str(e).splitlines()[0][:300]}"
            ) from e
        raise
    return Member(spec, tower, preprocess, record, resolved, device, DTYPES[precision],
                  member.normalize, compile)


__all__ = ["Member", "MemberConfig", "WeightsConfig", "family_module", "load_member",
           "resolve_weights"]
