"""A member loaded from a checkpoint file is built empty and given the file's tensors: no
random initialisation is drawn only to be overwritten (a second of start-up for ViT-B/32
on 2 cores), and the tower equals one built the upstream way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from tests.conftest import TINY

CPU = torch.device("cpu")


@pytest.fixture
def random_draws(monkeypatch) -> list[torch.device]:
    """The devices of every tensor filled by normal_ / uniform_ (what nn.init uses)."""
    devices: list[torch.device] = []
    for name in ("normal_", "uniform_"):
        original = getattr(torch.Tensor, name)

        def draw(self, *args, _original=original, **kwargs):
            devices.append(self.device)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, draw)
    return devices


def _load(name: str, ckpt) -> torch.nn.Module:
    return load_member(MemberConfig(name, str(ckpt)), CPU, "fp32",
                       WeightsConfig(cache_dir=str(ckpt.parent)))


def test_open_clip_member_skips_random_init(tmp_path, random_draws):
    import open_clip

    torch.manual_seed(3)
    ref = open_clip.create_model("clipvec-tiny-vit").eval()
    ckpt = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), ckpt)
    random_draws.clear()  # the reference's own, real, random weights
    member = _load(TINY, ckpt)
    assert random_draws, "the probe saw no initialisation at all"
    assert all(d.type == "meta" for d in random_draws), set(random_draws)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = F.normalize(ref.encode_image(x), dim=-1)
    assert torch.allclose(member.encode(x), want, atol=1e-6), (member.encode(x) - want).abs().max()


@pytest.mark.slow
def test_openai_clip_member_skips_random_init(tmp_path, random_draws):
    from clipvec_tasks.members.openai_clip_member import random_state_dict

    torch.manual_seed(4)
    sd = random_state_dict("ViT-B/32")
    ckpt = tmp_path / "clip_b32.pt"
    torch.save(sd, ckpt)
    random_draws.clear()  # the checkpoint's own, real, random weights
    member = _load("openai_clip_vit_b32", ckpt)
    assert random_draws, "the probe saw no initialisation at all"
    assert all(d.type == "meta" for d in random_draws), set(random_draws)
    for name, p in member.tower.state_dict().items():
        assert torch.equal(p, sd[f"visual.{name}"].float()), name


@pytest.mark.slow
def test_openai_clip_text_tower_from_a_checkpoint_matches_upstream(tmp_path):
    """The text tower (search) keeps the CPU build: its causal mask is not in checkpoints."""
    import clip

    from clipvec_tasks.members import family_module, resolve_weights
    from clipvec_tasks.members.openai_clip_member import random_state_dict
    from clipvec_tasks.registry import get_spec
    from clipvec_tasks.weights import parse_pretrained

    torch.manual_seed(5)
    sd = random_state_dict("ViT-B/32")
    ckpt = tmp_path / "clip_b32.pt"
    torch.save(sd, ckpt)
    spec = get_spec("openai_clip_vit_b32")
    resolved = resolve_weights(spec, parse_pretrained(str(ckpt), spec.weights, 0),
                               WeightsConfig(cache_dir=str(tmp_path)))
    got = family_module(spec.family).build_text(spec, resolved)(["a photo of a cat"])
    ref = clip.model.build_model(dict(sd)).float().eval()
    with torch.no_grad():
        want = ref.encode_text(clip.tokenize(["a photo of a cat"])).float()
    assert torch.allclose(got, want, atol=1e-5)
