"""The `clipvec` command end to end on generated images with random weights."""

from __future__ import annotations

import json

import lance
import numpy as np
import pytest

from clipvec_tasks.cli import main
from flows.vectorize import run
from tests.conftest import TINY_DIM, job_config


def _cli(capsys, *args: str) -> str:
    capsys.readouterr()  # drop what fixtures printed
    main(list(args))
    return capsys.readouterr().out


def test_models_lists_every_name(capsys):
    out = _cli(capsys, "models")
    for name in ("openai_clip_vit_b32", "open_clip_vit_h14", "open_clip_convnext_large",
                 "resnet152", "efficientnet_b7", "vit_b_16"):
        assert name in out
    assert "2560" in out and "600" in out  # efficientnet_b7's dim and input size


def test_embed_prints_the_seed_summary(capsys, image_dir, tmp_path):
    out = _cli(capsys, "embed", str(image_dir / "a.jpg"), "--models", "resnet18",
               "--pretrained", "random", "--device", "cpu", "-o", str(tmp_path / "v.npy"))
    assert "vector shape: (512,)" in out and "device: cpu" in out and "mean:" in out
    assert np.load(tmp_path / "v.npy").shape == (1, 512)
    out = _cli(capsys, "embed", str(image_dir), "--models", "tiny_clip,resnet18",
               "--pretrained", "random", "--device", "cpu", "--batch_size", "3")
    assert f"vector shape: (7, {TINY_DIM + 512})" in out and "images: 7 (7 ok" in out


def test_embed_reports_failed_files_and_keeps_the_others_in_order(capsys, image_dir, tmp_path):
    (image_dir / "sub" / "broken.jpg").write_bytes(b"")
    out = _cli(capsys, "embed", str(image_dir), "--models", "tiny_clip", "--pretrained",
               "random", "--device", "cpu", "--batch_size", "2", "-o", str(tmp_path / "all.npy"))
    assert "images: 8 (7 ok, 1 failed)" in out and "broken.jpg: empty" in out
    _cli(capsys, "embed", str(image_dir / "sub" / "c.jpg"), "--models", "tiny_clip",
         "--pretrained", "random", "--device", "cpu", "-o", str(tmp_path / "c.npy"))
    from clipvec_tasks.sources import list_images

    ok = [it.uri for it in list_images(str(image_dir)) if not it.uri.endswith("broken.jpg")]
    all_vectors = np.load(tmp_path / "all.npy")
    assert all_vectors.shape == (7, TINY_DIM)
    row = next(i for i, u in enumerate(ok) if u.endswith("sub/c.jpg"))  # the listing's order
    np.testing.assert_allclose(all_vectors[row], np.load(tmp_path / "c.npy")[0], atol=1e-6)


def test_unknown_model_is_one_line_and_exit_2(capsys, image_dir):
    with pytest.raises(SystemExit) as e:
        main(["embed", str(image_dir), "--models", "resnet1522", "--device", "cpu"])
    assert e.value.code == 2 and "resnet152" in capsys.readouterr().err


@pytest.fixture
def dataset(image_dir, tmp_path, prefect_api):
    sink = tmp_path / "d.lance"
    run(job_config(image_dir, sink))
    return sink


def test_datasets_show(capsys, dataset):
    out = _cli(capsys, "datasets", "show", str(dataset))
    assert "rows: 7" in out and "ok: 7" in out and "tiny_clip" in out
    assert "NOT pretrained" in out and "version: 1" in out


def test_export_parquet_and_npy(capsys, dataset, tmp_path):
    import pyarrow.parquet as pq

    _cli(capsys, "export", str(dataset), "--format", "parquet", "-o", str(tmp_path / "e.parquet"))
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 7
    _cli(capsys, "export", str(dataset), "--format", "npy", "-o", str(tmp_path / "e.npy"))
    assert np.load(tmp_path / "e.npy").shape == (7, TINY_DIM)
    assert len(json.loads((tmp_path / "e.ids.json").read_text())) == 7


def test_search_ranks_by_the_recorded_models_text_tower(capsys, dataset, tmp_path):
    import open_clip
    import torch

    out = _cli(capsys, "search", str(dataset), "a red square", "-k", "3", "--html",
               str(tmp_path / "s.html"))
    lines = [ln.split() for ln in out.splitlines()[1:4]]
    assert [ln[0] for ln in lines] == ["1", "2", "3"]
    scores = [float(ln[1]) for ln in lines]
    assert scores == sorted(scores, reverse=True)
    # the same seeded model, built independently, gives the same best score
    torch.manual_seed(0)
    model = open_clip.create_model("clipvec-tiny-vit").eval()
    with torch.no_grad():
        q = model.encode_text(open_clip.get_tokenizer("clipvec-tiny-vit")(["a red square"]))[0]
    q = (q / q.norm()).numpy()
    emb = np.stack(lance.dataset(str(dataset)).to_table().column("embedding").to_pylist())
    assert abs((emb @ q).max() - scores[0]) < 1e-4
    assert (tmp_path / "s.html").read_text().count("<img ") == 3


def test_search_needs_a_clip_member(capsys, image_dir, tmp_path, prefect_api):
    sink = tmp_path / "tv.lance"
    run(job_config(image_dir, sink, model="resnet18"))
    with pytest.raises(SystemExit):
        main(["search", str(sink), "cat"])
    assert "no text tower" in capsys.readouterr().err


def test_bench_measures_each_model(capsys):
    out = _cli(capsys, "bench", "--models", "resnet18", "--device", "cpu", "--seconds", "0.2",
               "--batch_size", "2")
    assert "resnet18" in out and "512" in out


def test_index_then_search_uses_it(capsys, tmp_path, prefect_api):
    from tests.conftest import make_image

    src = tmp_path / "many"
    for i in range(300):
        make_image(src / f"{i:03d}.png", (32, 32), seed=i)
    sink = tmp_path / "big.lance"
    run(job_config(src, sink, shard_size=1000, batch_size=64))
    exact = _cli(capsys, "search", str(sink), "a blue circle", "-k", "300")
    truth = {ln.split()[2]: float(ln.split()[1]) for ln in exact.splitlines()[1:]}
    out = _cli(capsys, "datasets", "index", str(sink), "--partitions", "2")
    assert "indexed 300 rows" in out
    ann = [ln.split() for ln in _cli(capsys, "search", str(sink), "a blue circle", "-k", "5")
           .splitlines()[1:]]
    assert len(ann) == 5
    # refined by exact distances: each score is the row's true score, in order
    for _, score, uri in ann:
        assert abs(float(score) - truth[uri]) < 1e-3
    assert [float(s) for _, s, _ in ann] == sorted((float(s) for _, s, _ in ann), reverse=True)
