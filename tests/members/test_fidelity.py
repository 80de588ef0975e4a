"""Each family's embedding of a file equals the upstream library's own preprocess + encode.

Real architectures, random weights saved to a checkpoint and loaded back through
``pretrained=PATH``; fp32; cosine >= 0.9999.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipvec_tasks.decode import decode_image
from clipvec_tasks.embedder import Embedder
from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from tests.conftest import make_image

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A non-square JPEG, so resize and crop both matter."""
    return make_image(tmp_path_factory.mktemp("img") / "p.jpg", (300, 200), seed=5)


def _ours(name: str, ckpt, path) -> torch.Tensor:
    member = load_member(MemberConfig(name, str(ckpt)), CPU, "fp32",
                         WeightsConfig(cache_dir=str(ckpt.parent)))
    img = decode_image(path.read_bytes()).image
    return member.encode(member.preprocess(img)[None])[0]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_open_clip_matches_upstream(tmp_path, photo):
    import open_clip

    torch.manual_seed(11)
    ref = open_clip.create_model("ViT-B-32").eval()
    ckpt = tmp_path / "vit_b32.pt"
    torch.save(ref.state_dict(), ckpt)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(ckpt))
    with torch.no_grad():
        want = F.normalize(ref.encode_image(preprocess(Image.open(photo))[None]), dim=-1)[0]
    got = _ours("open_clip_vit_b32", ckpt, photo)
    assert _cos(got, want) >= 0.9999


def test_openai_clip_matches_upstream(tmp_path, photo):
    import clip

    from clipvec_tasks.members.openai_clip_member import random_state_dict

    torch.manual_seed(12)
    sd = random_state_dict("ViT-B/32")
    ckpt = tmp_path / "clip_b32.pt"
    torch.save(sd, ckpt)
    ref = clip.model.build_model(dict(sd)).float().eval()
    preprocess = clip.clip._transform(ref.visual.input_resolution)
    with torch.no_grad():
        want = F.normalize(ref.encode_image(preprocess(Image.open(photo))[None]), dim=-1)[0]
    got = _ours("openai_clip_vit_b32", ckpt, photo)
    assert _cos(got, want) >= 0.9999


def test_torchvision_matches_upstream(tmp_path, photo):
    from safetensors.torch import save_file
    from torchvision.models import ResNet152_Weights, resnet152

    torch.manual_seed(13)
    ref = resnet152().eval()
    ckpt = tmp_path / "resnet152.safetensors"
    save_file(ref.state_dict(), ckpt)
    ref.fc = torch.nn.Identity()
    preprocess = ResNet152_Weights.DEFAULT.transforms()
    with torch.no_grad():
        want = F.normalize(ref(preprocess(Image.open(photo))[None]), dim=-1)[0]
    got = _ours("resnet152", ckpt, photo)
    assert got.shape == (2048,) and _cos(got, want) >= 0.9999


def test_random_weights_are_seeded_and_recorded():
    a = load_member(MemberConfig("resnet18", "random", seed=3), CPU, "fp32", WeightsConfig())
    b = load_member(MemberConfig("resnet18", "random", seed=3), CPU, "fp32", WeightsConfig())
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(a.encode(x), b.encode(x))
    assert a.describe(0)["weights"] == {"kind": "random", "pretrained": False, "seed": 3,
                                        "sha256": None}


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    from clipvec_tasks.errors import ClipvecError

    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(ClipvecError, match="does not fit resnet18"):
        load_member(MemberConfig("resnet18", str(tmp_path / "wrong.pt")), CPU, "fp32",
                    WeightsConfig())


def test_ensemble_decodes_once_and_concatenates(photo):
    members = [load_member(MemberConfig(n, "random"), CPU, "fp32", WeightsConfig())
               for n in ("tiny_clip", "resnet18")]
    emb = Embedder(members)
    img = decode_image(photo.read_bytes()).image
    vec = emb.embed([emb.preprocess(img)])[0]
    assert vec.shape == (32 + 512,) and emb.offsets == [0, 32]
    for m, o in zip(members, emb.offsets, strict=True):
        part = m.encode(m.preprocess(img)[None])[0].numpy()
        np.testing.assert_allclose(vec[o:o + m.dim], part, atol=1e-6)
        assert abs(np.linalg.norm(part) - 1) < 1e-5


def test_bf16_stays_close_to_fp32(photo):
    """CPU bf16 (where supported) stays within the documented tolerance of fp32."""
    img = decode_image(photo.read_bytes()).image
    out = {}
    for p in ("fp32", "bf16"):
        m = load_member(MemberConfig("tiny_clip", "random"), CPU, p, WeightsConfig())
        out[p] = m.encode(m.preprocess(img)[None])[0]
    assert _cos(out["fp32"], out["bf16"]) >= 0.99


def test_convolutional_towers_are_recognised_for_channels_last():
    from clipvec_tasks.members.base import _is_convolutional

    conv = load_member(MemberConfig("resnet18", "random"), CPU, "fp32", WeightsConfig())
    vit = load_member(MemberConfig("tiny_clip", "random"), CPU, "fp32", WeightsConfig())
    assert _is_convolutional(conv.tower) and not _is_convolutional(vit.tower)
    assert not conv.channels_last  # only on GPUs


def test_compiled_tower_gives_the_same_vectors(photo):
    img = decode_image(photo.read_bytes()).image
    plain = load_member(MemberConfig("tiny_clip", "random"), CPU, "fp32", WeightsConfig())
    fast = load_member(MemberConfig("tiny_clip", "random"), CPU, "fp32", WeightsConfig(),
                       compile=True)
    x = plain.preprocess(img)[None]
    assert _cos(plain.encode(x)[0], fast.encode(x)[0]) >= 0.9999
