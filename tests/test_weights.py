"""Weights: parsing, safe checkpoint loading, cache and mirror, the offline error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.weights import (
    fetch_checkpoint,
    fetch_tag,
    load_state_dict,
    parse_pretrained,
    sha256_file,
)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [(None, "tag", "T"), ("default", "tag", "T"), ("random", "random", "random"),
     ("/x/y.pt", "checkpoint", "/x/y.pt"), ("s3://b/k.safetensors", "checkpoint",
                                             "s3://b/k.safetensors"),
     ("w.bin", "checkpoint", "w.bin"), ("laion2b_e16", "tag", "laion2b_e16")],
)
def test_parse_pretrained(value, kind, text):
    ref = parse_pretrained(value, "T")
    assert (ref.kind, ref.value) == (kind, text)


def test_state_dict_files_load(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        got = load_state_dict(str(tmp_path / name))
        assert set(got) == set(sd) and torch.equal(got["a.weight"], sd["a.weight"])


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


def test_pickled_code_is_never_executed(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    torch.save({"w": torch.ones(1), "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ClipvecError, match="never executes pickled code"):
        load_state_dict(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_remote_checkpoint_is_cached_once(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/ckpt/w.pt", "wb") as f:
        torch.save({"w": torch.ones(2)}, f)
    path = fetch_checkpoint("memory://ckpt/w.pt", str(tmp_path))
    assert Path(path).is_file() and str(tmp_path) in path
    fs.rm("/ckpt/w.pt")
    assert fetch_checkpoint("memory://ckpt/w.pt", str(tmp_path)) == path


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ClipvecError, match="does not exist"):
        fetch_checkpoint(str(tmp_path / "none.pt"), str(tmp_path))


def test_mirror_is_tried_before_the_hub_and_filled_after(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    calls = []

    def download(cache_dir: str) -> str:
        calls.append(cache_dir)
        p = Path(cache_dir) / "hub" / "w.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"weights")
        return str(p)

    first = fetch_tag("fam", "A", "t", "fam/A/t/w.bin", download, str(cache), str(mirror), None)
    assert calls and (mirror / "fam/A/t/w.bin").read_bytes() == b"weights"
    other_cache = tmp_path / "cache2"
    second = fetch_tag("fam", "A", "t", "fam/A/t/w.bin", download, str(other_cache),
                       str(mirror), None)
    assert len(calls) == 1 and second.startswith(str(other_cache))
    assert sha256_file(first) == sha256_file(second)


def test_offline_error_says_the_ways_out(tmp_path):
    from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member

    with pytest.raises(ClipvecError) as e:
        load_member(MemberConfig("openai_clip_vit_b32"), torch.device("cpu"), "fp32",
                    WeightsConfig(cache_dir=str(tmp_path)))
    msg = str(e.value)
    assert "ViT-B/32" in msg and "pretrained=random" in msg and "weights.mirror" in msg


def test_expected_hash_from_the_libraries_urls():
    from clipvec_tasks.weights import expected_hash

    sha = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert expected_hash(f"https://openaipublic.azureedge.net/clip/models/{sha}/ViT-B-32.pt") == sha
    assert expected_hash("https://download.pytorch.org/models/resnet152-f82ba261.pth") == "f82ba261"
    assert expected_hash("https://hf.co/laion/x/resolve/main/open_clip_pytorch_model.bin") is None


def test_corrupt_mirror_copy_is_refused(tmp_path):
    import hashlib

    mirror = tmp_path / "mirror" / "fam"
    mirror.mkdir(parents=True)
    (mirror / "w.bin").write_bytes(b"tampered")
    good = hashlib.sha256(b"weights").hexdigest()

    def no_download(cache_dir):
        raise AssertionError("the hub must not be asked")

    with pytest.raises(ClipvecError, match="corrupt"):
        fetch_tag("fam", "A", "t", "fam/w.bin", no_download, str(tmp_path / "c"),
                  str(tmp_path / "mirror"), None, expected_sha256=good[:8])
    assert not (tmp_path / "c" / "weights" / "fam" / "w.bin").exists()
    (mirror / "w.bin").write_bytes(b"weights")
    path = fetch_tag("fam", "A", "t", "fam/w.bin", no_download, str(tmp_path / "c"),
                     str(tmp_path / "mirror"), None, expected_sha256=good[:8])
    assert Path(path).read_bytes() == b"weights"
