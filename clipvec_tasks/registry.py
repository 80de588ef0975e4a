"""The model registry: every name users can ask for, as data.

One entry per name: family, architecture, weights tag, embedding dimension and
input size. Dimensions and input sizes are those of the models themselves
(``tests/test_registry.py`` checks each against the upstream library's own
config). Torchvision classification architectures not listed here are
accepted by their torchvision name and described on demand.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import ClipvecError

FAMILIES = ("openai_clip", "open_clip", "torchvision")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a registered name stands for."""

    name: str
    family: str
    arch: str
    weights: str  # the family's own weights tag (the default ``pretrained``)
    dim: int
    input_size: int
    alias_of: str | None = None

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "arch": self.arch,
            "weights": self.weights,
            "dim": self.dim,
            "input_size": self.input_size,
        }


def _spec(name: str, family: str, arch: str, weights: str, dim: int, size: int) -> ModelSpec:
    return ModelSpec(name, family, arch, weights, dim, size)


_MODELS: tuple[ModelSpec, ...] = (
    # OpenAI CLIP through the `clip` package; weights tag = clip.available_models() name
    _spec("openai_clip_vit_b32", "openai_clip", "ViT-B/32", "ViT-B/32", 512, 224),
    _spec("openai_clip_vit_b16", "openai_clip", "ViT-B/16", "ViT-B/16", 512, 224),
    _spec("openai_clip_vit_l14", "openai_clip", "ViT-L/14", "ViT-L/14", 768, 224),
    _spec("openai_clip_rn50", "openai_clip", "RN50", "RN50", 1024, 224),
    _spec("openai_clip_rn101", "openai_clip", "RN101", "RN101", 512, 224),
    # OpenCLIP: (model config name, pretrained tag)
    _spec("open_clip_vit_b32_openai", "open_clip", "ViT-B-32-quickgelu", "openai", 512, 224),
    _spec("open_clip_vit_b32_laion400m", "open_clip", "ViT-B-32-quickgelu", "laion400m_e32",
          512, 224),
    _spec("open_clip_vit_b16_laion400m", "open_clip", "ViT-B-16", "laion400m_e32", 512, 224),
    _spec("open_clip_vit_b32_laion2b", "open_clip", "ViT-B-32", "laion2b_s34b_b79k", 512, 224),
    _spec("open_clip_vit_b16_laion2b", "open_clip", "ViT-B-16", "laion2b_s34b_b88k", 512, 224),
    _spec("open_clip_vit_l14_laion2b", "open_clip", "ViT-L-14", "laion2b_s32b_b82k", 768, 224),
    _spec("open_clip_vit_h14_laion2b", "open_clip", "ViT-H-14", "laion2b_s32b_b79k", 1024, 224),
    # ConvNeXt: the seed's table said 640-d; the models are 512-d (base) and 768-d at 320 px
    _spec("open_clip_convnext_base", "open_clip", "convnext_base", "laion400m_s13b_b51k", 512, 224),
    _spec(
        "open_clip_convnext_large",
        "open_clip",
        "convnext_large_d_320",
        "laion2b_s29b_b131k_ft_soup",
        768,
        320,
    ),
    # torchvision: penultimate features; weights tag = the weights enum member (DEFAULT)
    _spec("resnet152", "torchvision", "resnet152", "IMAGENET1K_V2", 2048, 224),
    _spec("efficientnet_b7", "torchvision", "efficientnet_b7", "IMAGENET1K_V1", 2560, 600),
    _spec("vit_b_16", "torchvision", "vit_b_16", "IMAGENET1K_V1", 768, 224),
)

# short names for the best LAION-2B weights of each OpenCLIP ViT
_ALIASES: dict[str, str] = {
    "open_clip_vit_b32": "open_clip_vit_b32_laion2b",
    "open_clip_vit_b16": "open_clip_vit_b16_laion2b",
    "open_clip_vit_l14": "open_clip_vit_l14_laion2b",
    "open_clip_vit_h14": "open_clip_vit_h14_laion2b",
}

_BY_NAME: dict[str, ModelSpec] = {s.name: s for s in _MODELS}


def register_model(spec: ModelSpec) -> None:
    """Add a model to the registry at run time (custom architectures, tests)."""
    if spec.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {spec.family!r}")
    global _MODELS
    _MODELS = tuple(s for s in _MODELS if s.name != spec.name) + (spec,)
    _BY_NAME[spec.name] = spec


def registered_names(include_aliases: bool = True) -> list[str]:
    """Every registered name, aliases included unless asked otherwise."""
    names = [s.name for s in _MODELS]
    return names + list(_ALIASES) if include_aliases else names


def list_models() -> list[ModelSpec]:
    """Every registered model, aliases as specs of their own (``alias_of`` set)."""
    specs = list(_MODELS)
    for alias, target in _ALIASES.items():
        t = _BY_NAME[target]
        specs.append(ModelSpec(alias, t.family, t.arch, t.weights, t.dim, t.input_size, target))
    return specs


def get_spec(name: str) -> ModelSpec:
    """The spec for ``name``: registered, alias, or any torchvision classifier.

    Raises ClipvecError naming the closest registered names when unknown.
    """
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name in _ALIASES:
        t = _BY_NAME[_ALIASES[name]]
        return ModelSpec(name, t.family, t.arch, t.weights, t.dim, t.input_size, t.name)
    spec = _torchvision_spec(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name, registered_names(), n=4, cutoff=0.5)
    hint = f" Closest registered names: {', '.join(close)}." if close else ""
    raise ClipvecError(
        f"Unknown model '{name}'.{hint} Run `clipvec models` to list every registered "
        "name; any torchvision classification architecture (e.g. resnet50, convnext_tiny) "
        "is accepted by its torchvision name."
    )


def _torchvision_spec(name: str) -> ModelSpec | None:
    """Describe an unlisted torchvision classifier by building it on the meta device."""
    from .members.torchvision_member import describe_torchvision_arch

    described = describe_torchvision_arch(name)
    if described is None:
        return None
    weights, dim, size = described
    return ModelSpec(name, "torchvision", name, weights, dim, size)
