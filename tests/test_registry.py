"""Every name in CONTRACT.md, with dims and input sizes taken from the models themselves."""

from __future__ import annotations

import pytest

from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.registry import get_spec, list_models, registered_names

CONTRACT_NAMES = [
    "openai_clip_vit_b32", "openai_clip_vit_b16", "openai_clip_vit_l14", "openai_clip_rn50",
    "openai_clip_rn101", "open_clip_vit_b32_openai", "open_clip_vit_b32_laion400m",
    "open_clip_vit_b16_laion400m", "open_clip_vit_l14_laion2b", "open_clip_vit_h14_laion2b",
    "open_clip_convnext_base", "open_clip_convnext_large", "open_clip_vit_b32",
    "open_clip_vit_b16", "open_clip_vit_l14", "open_clip_vit_h14", "resnet152",
    "efficientnet_b7", "vit_b_16",
]


def test_every_contract_name_is_registered():
    assert set(CONTRACT_NAMES) <= set(registered_names())


@pytest.mark.parametrize("spec", [s for s in list_models() if s.family == "open_clip"],
                         ids=lambda s: s.name)
def test_open_clip_dims_and_sizes_follow_upstream(spec):
    import open_clip

    cfg = open_clip.get_model_config(spec.arch)
    assert cfg["embed_dim"] == spec.dim
    assert cfg["vision_cfg"]["image_size"] == spec.input_size
    assert open_clip.get_pretrained_cfg(spec.arch, spec.weights), "tag must exist upstream"


@pytest.mark.parametrize("spec", [s for s in list_models() if s.family == "openai_clip"],
                         ids=lambda s: s.name)
def test_openai_clip_dims_follow_upstream(spec):
    import clip
    import open_clip

    assert spec.weights in clip.available_models()
    oc_name = spec.arch.replace("/", "-")
    assert open_clip.get_model_config(oc_name)["embed_dim"] == spec.dim


@pytest.mark.parametrize("spec", [s for s in list_models() if s.family == "torchvision"],
                         ids=lambda s: s.name)
def test_torchvision_dims_follow_upstream(spec):
    from clipvec_tasks.members.torchvision_member import describe_torchvision_arch

    assert describe_torchvision_arch(spec.arch) == (spec.weights, spec.dim, spec.input_size)


def test_any_torchvision_classifier_by_name():
    s = get_spec("convnext_tiny")
    assert (s.family, s.dim, s.input_size) == ("torchvision", 768, 224)
    assert get_spec("resnet50").dim == 2048


def test_aliases_point_to_laion2b():
    s = get_spec("open_clip_vit_h14")
    assert s.alias_of == "open_clip_vit_h14_laion2b" and s.weights.startswith("laion2b")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ClipvecError, match="openai_clip_vit_b32"):
        get_spec("openai_clip_vitb32")
