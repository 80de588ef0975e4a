"""The vectorize flow in-process: rows, vectors, versions, metadata, errors."""

from __future__ import annotations

import json

import lance
import numpy as np
import pytest
from PIL import Image

from clipvec_tasks.errors import ClipvecError
from flows.vectorize import run
from tests.conftest import TINY_DIM, job_config, make_image

pytestmark = pytest.mark.usefixtures("prefect_api")


def _table(uri):
    return lance.dataset(str(uri)).to_table().to_pandas()


def test_folder_to_dataset_one_ok_row_per_image(image_dir, tmp_path):
    sink = tmp_path / "out.lance"
    summary = run(job_config(image_dir, sink))
    df = _table(sink)
    assert len(df) == 7 and set(df.status) == {"ok"}
    assert df.id.is_unique
    assert all(i.startswith("file://") and i.endswith((".jpg", ".png", ".webp", ".jpeg", ".gif"))
               for i in df.id)
    vecs = np.stack(df.embedding.to_numpy())
    assert vecs.shape == (7, TINY_DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert df.run_id.nunique() == 1 and df.run_id[0]
    assert (df.width > 0).all() and (df.height > 0).all() and df.sha256.str.len().eq(64).all()
    assert summary["ok"] == 7 and summary["version"] == 1 and summary["dim"] == TINY_DIM
    ds = lance.dataset(str(sink))
    meta = json.loads(ds.schema.metadata[b"clipvec"])
    member = meta["model"]["members"][0]
    assert member["family"] == "open_clip" and member["dim"] == TINY_DIM
    assert member["weights"] == {"kind": "random", "pretrained": False, "seed": 0, "sha256": None}
    assert member["preprocessing"]["image_size"] == [64, 64]
    assert meta["clipvec_version"] and "torch" in meta["libraries"]
    assert meta["source"]["uri"] == str(image_dir)


def test_shards_and_batches_do_not_change_vectors(image_dir, tmp_path):
    run(job_config(image_dir, tmp_path / "a.lance", shard_size=2, batch_size=1))
    run(job_config(image_dir, tmp_path / "b.lance", shard_size=100, batch_size=8))
    a = _table(tmp_path / "a.lance").set_index("id").sort_index()
    b = _table(tmp_path / "b.lance").set_index("id").sort_index()
    np.testing.assert_allclose(np.stack(a.embedding), np.stack(b.embedding), atol=1e-5)


def test_rerun_adds_nothing_then_only_new_images(image_dir, tmp_path):
    sink = tmp_path / "out.lance"
    run(job_config(image_dir, sink))
    again = run(job_config(image_dir, sink))
    assert again["new_or_changed"] == 0 and again["version"] is None
    assert lance.dataset(str(sink)).version == 1
    for i in range(3):
        make_image(image_dir / "new" / f"n{i}.png", seed=100 + i)
    third = run(job_config(image_dir, sink))
    ds = lance.dataset(str(sink))
    assert third["embedded"] == 3 and ds.version == 2 and ds.count_rows() == 10


def test_changed_image_replaces_its_row(image_dir, tmp_path):
    sink = tmp_path / "out.lance"
    run(job_config(image_dir, sink))
    before = _table(sink).set_index("id")
    target = image_dir / "b.png"
    make_image(target, (200, 100), seed=999)
    summary = run(job_config(image_dir, sink))
    after = _table(sink).set_index("id")
    key = next(i for i in after.index if i.endswith("/b.png"))
    assert summary["embedded"] == 1 and len(after) == 7 and after.index.is_unique
    assert after.loc[key, "width"] == 200 and after.loc[key, "sha256"] != before.loc[key, "sha256"]


def test_ensemble_concatenates_members_in_order(image_dir, tmp_path):
    sink = tmp_path / "ens.lance"
    run(job_config(image_dir, sink, model=["tiny_clip", "resnet18"]))
    single = tmp_path / "one.lance"
    run(job_config(image_dir, single, model="resnet18"))
    ens = _table(sink).set_index("id").sort_index()
    one = _table(single).set_index("id").sort_index()
    vecs = np.stack(ens.embedding)
    assert vecs.shape == (7, TINY_DIM + 512)
    np.testing.assert_allclose(np.linalg.norm(vecs[:, :TINY_DIM], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vecs[:, TINY_DIM:], np.stack(one.embedding), atol=1e-5)
    meta = json.loads(lance.dataset(str(sink)).schema.metadata[b"clipvec"])
    assert [(m["name"], m["offset"], m["dim"]) for m in meta["model"]["members"]] == [
        ("tiny_clip", 0, TINY_DIM), ("resnet18", TINY_DIM, 512)]


def test_other_model_configuration_is_refused(image_dir, tmp_path):
    sink = tmp_path / "out.lance"
    run(job_config(image_dir, sink))
    with pytest.raises(ClipvecError, match="another model configuration"):
        run(job_config(image_dir, sink, model="resnet18"))
    cfg = job_config(image_dir, sink)
    cfg["model"]["members"][0]["seed"] = 1
    with pytest.raises(ClipvecError, match="another model configuration"):
        run(cfg)


def test_missing_source_and_empty_source(tmp_path):
    with pytest.raises(ClipvecError, match="does not exist"):
        run(job_config(tmp_path / "nope", tmp_path / "o.lance"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ClipvecError, match="holds no images"):
        run(job_config(tmp_path / "empty", tmp_path / "o.lance"))


def test_unknown_model_suggests_close_names(image_dir, tmp_path):
    with pytest.raises(ClipvecError, match="open_clip_vit_b32") as e:
        run(job_config(image_dir, tmp_path / "o.lance", model="open_clip_vit_b23"))
    assert "clipvec models" in str(e.value)


def test_weights_unavailable_offline_says_what_to_do(image_dir, tmp_path):
    with pytest.raises(ClipvecError) as e:
        run(job_config(image_dir, tmp_path / "o.lance", model="open_clip_vit_b32",
                       pretrained="default"))
    msg = str(e.value)
    assert "cache" in msg and "pretrained=random" in msg and "checkpoint" in msg


def test_killed_run_resumes_finished_shards(image_dir, tmp_path, monkeypatch):
    """Shards finished before a crash are not embedded again; rows are not duplicated."""
    from clipvec_tasks import job as J
    from flows.vectorize import embed_shard

    sink = tmp_path / "out.lance"
    real = J.run_shard
    calls = []

    def crash_on_third(job, shard, plan_id, run_id, progress=None):
        calls.append(shard.index)
        if shard.index == 1:
            raise KeyboardInterrupt  # not retried: like a kill
        return real(job, shard, plan_id, run_id, progress)

    monkeypatch.setattr(embed_shard, "fn", crash_on_third)
    with pytest.raises(BaseException):  # noqa: B017 - any way the run dies
        run(job_config(image_dir, sink, shard_size=3, workers=1))
    assert not (sink / "_versions").exists()  # nothing committed: readers see no half-run
    calls.clear()
    monkeypatch.setattr(embed_shard, "fn", lambda job, shard, plan_id, run_id, progress=None: (
        calls.append(shard.index), real(job, shard, plan_id, run_id, progress))[1])
    summary = run(job_config(image_dir, sink, shard_size=3, workers=1))
    assert 1 in calls and 0 not in calls and summary["resumed_shards"] == 3 - len(calls)
    df = _table(sink)
    assert len(df) == 7 and df.id.is_unique and set(df.status) == {"ok"}
    assert not (sink / "_clipvec_staging").exists()


def test_dataset_reads_as_the_readme_shows(image_dir, tmp_path):
    """README's reading recipe: Lance -> Arrow -> DuckDB / pandas."""
    duckdb = pytest.importorskip("duckdb")
    sink = tmp_path / "out.lance"
    run(job_config(image_dir, sink))
    ds = lance.dataset(str(sink))
    images = ds.to_table(columns=["uri", "status", "embedding"])  # noqa: F841 - read by duckdb
    n = duckdb.sql("select count(*) from images where status = 'ok'").fetchall()[0][0]
    df = ds.to_table(filter="status = 'ok'").to_pandas()
    assert n == 7 and len(df) == 7 and len(df.embedding[0]) == TINY_DIM


def test_deleted_sources_are_kept_or_deleted_by_policy(image_dir, tmp_path):
    sink = tmp_path / "out.lance"
    run(job_config(image_dir, sink))
    (image_dir / "a.jpg").unlink()
    kept = run(job_config(image_dir, sink))
    assert kept["deleted_in_source"] == 1 and lance.dataset(str(sink)).count_rows() == 7
    cfg = job_config(image_dir, sink)
    cfg["sink"]["on_deleted"] = "delete"
    gone = run(cfg)
    ds = lance.dataset(str(sink))
    assert gone["version"] == 2 and ds.count_rows() == 6
    assert not any(i.endswith("/a.jpg") for i in ds.to_table(columns=["id"])["id"].to_pylist())


def test_storage_options_stay_out_of_prefect_parameters(image_dir, tmp_path):
    from prefect import get_client

    cfg = job_config(image_dir, tmp_path / "o.lance")
    cfg["source"]["storage_options"] = {"secret": "hunter2-secret"}
    run(cfg)

    async def last_params():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=1, sort="START_TIME_DESC")
            return runs[0].parameters

    import asyncio

    params = asyncio.run(last_params())
    assert params["config"]["source"]["uri"] == str(image_dir)
    assert "hunter2-secret" not in str(params)


def test_tensor_preprocessing_matches_pil(image_dir, tmp_path):
    """The GPU path's batched preprocessing (run here on CPU) gives the PIL path's vectors."""
    make_image(image_dir / "big.jpg", (640, 400), seed=77)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees: the GPU decoder ignores this, clipvec must not
    Image.open(make_image(image_dir / "tmp.png", (160, 90), seed=79)).save(
        image_dir / "turned.jpg", exif=exif, quality=95)
    (image_dir / "tmp.png").unlink()
    run(job_config(image_dir, tmp_path / "pil.lance", model=["tiny_clip", "resnet18"],
                   preprocess="pil"))
    run(job_config(image_dir, tmp_path / "t.lance", model=["tiny_clip", "resnet18"],
                   preprocess="tensor"))
    a = _table(tmp_path / "pil.lance").set_index("id").sort_index()
    b = _table(tmp_path / "t.lance").set_index("id").sort_index()
    assert list(a.status) == list(b.status) and list(a.width) == list(b.width)
    va, vb = np.stack(a.embedding), np.stack(b.embedding)
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() >= 0.9999, cos


@pytest.mark.slow
def test_dask_runner_with_two_worker_processes(image_dir, tmp_path):
    """Shards fan out to a local Dask cluster of 2 worker processes (spawned, not forked)."""
    pytest.importorskip("prefect_dask")
    for i in range(6):
        make_image(image_dir / "more" / f"m{i}.png", seed=200 + i)
    sink = tmp_path / "dask.lance"
    summary = run(job_config(image_dir, sink, model="resnet18", task_runner="dask", workers=2,
                             shard_size=3))
    df = _table(sink)
    assert summary["ok"] == 13 and len(df) == 13 and df.id.is_unique
    assert len({r for r in df.run_id}) == 1


def test_webdataset_shards_through_the_flow(tmp_path):
    from tests.test_sources import _tar

    (tmp_path / "wds").mkdir()
    _tar(tmp_path / "wds" / "00000.tar", ["a.png", "a.txt", "b.png"])
    _tar(tmp_path / "wds" / "00001.tar", ["c.png", "d.png"])
    summary = run(job_config(tmp_path / "wds", tmp_path / "w.lance"))
    df = _table(tmp_path / "w.lance")
    assert summary["ok"] == 4 and len(df) == 4 and all(i.startswith("tar://") for i in df.id)
    assert run(job_config(tmp_path / "wds", tmp_path / "w.lance"))["embedded"] == 0


@pytest.mark.slow
def test_seed_style_ensemble_clip_l14_with_resnet152(image_dir, tmp_path):
    """The seed's mix through its named ensemble config: real architectures, random weights."""
    from flows.hydra_config import compose

    cfg = compose([f"source.uri={image_dir / 'sub' / 'deeper'}", f"sink.uri={tmp_path / 's.lance'}",
                   "model=clip_l14_resnet152", "model.members.0.pretrained=random",
                   "model.members.1.pretrained=random", "runtime.device=cpu",
                   f"weights.cache_dir={tmp_path / 'c'}"])
    summary = run(cfg)
    vecs = np.stack(_table(tmp_path / "s.lance").embedding)
    assert summary["dim"] == 768 + 2048 and vecs.shape == (2, 2816)
    np.testing.assert_allclose(np.linalg.norm(vecs[:, :768], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs[:, 768:], axis=1), 1, atol=1e-5)


def test_reader_processes_give_the_same_rows(image_dir, tmp_path):
    """The GPU path's spawned reader processes (run here on CPU) change nothing in the rows."""
    (image_dir / "empty.jpg").write_bytes(b"")
    make_image(image_dir / "big.jpg", (640, 400), seed=78)
    cfg = dict(model="resnet18", preprocess="tensor")
    run(job_config(image_dir, tmp_path / "threads.lance", read_processes=0, **cfg))
    run(job_config(image_dir, tmp_path / "procs.lance", read_processes=2, **cfg))
    a = _table(tmp_path / "threads.lance").set_index("id").sort_index()
    b = _table(tmp_path / "procs.lance").set_index("id").sort_index()
    assert list(a.status) == list(b.status) and list(a.sha256) == list(b.sha256)
    assert list(a.width.fillna(-1)) == list(b.width.fillna(-1)) and (a.status == "empty").sum() == 1
    ok = a.status == "ok"
    np.testing.assert_allclose(np.stack(a.embedding[ok]), np.stack(b.embedding[ok]), atol=1e-5)


@pytest.mark.parametrize("read_processes,share", [(0, 0.5), (2, 0.5), (2, "auto")])
def test_share_resized_by_the_readers_gives_the_same_rows(image_dir, tmp_path, read_processes,
                                                          share):
    """JPEGs the readers decode and resize with Pillow (runtime.cpu_decode_share) give the
    rows and vectors of the device path, an ensemble's two crop sizes included."""
    for i in range(5):
        make_image(image_dir / "jp" / f"j{i}.jpg", (160 + 37 * i, 120), seed=300 + i)
    cfg = dict(model=["tiny_clip", "resnet18"], preprocess="tensor",
               read_processes=read_processes)
    run(job_config(image_dir, tmp_path / "gpu.lance", **cfg))
    run(job_config(image_dir, tmp_path / "cpu.lance", cpu_decode_share=share, **cfg))
    a = _table(tmp_path / "gpu.lance").set_index("id").sort_index()
    b = _table(tmp_path / "cpu.lance").set_index("id").sort_index()
    assert list(a.status) == list(b.status) and list(a.width) == list(b.width)
    ok = a.status == "ok"
    va, vb = np.stack(a.embedding[ok]), np.stack(b.embedding[ok])
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() >= 0.9999, cos


def test_jpeg_draft_rows_match_the_exact_decode(image_dir, tmp_path):
    """runtime.jpeg_draft: large JPEGs decoded at a reduced scale give the same rows (the
    file's width and height) and vectors close to the exact decode's."""
    for i in range(4):
        make_image(image_dir / "big" / f"b{i}.jpg", (1200 + 100 * i, 900), seed=400 + i)
    run(job_config(image_dir, tmp_path / "exact.lance"))
    run(job_config(image_dir, tmp_path / "draft.lance", jpeg_draft=True))
    a = _table(tmp_path / "exact.lance").set_index("id").sort_index()
    b = _table(tmp_path / "draft.lance").set_index("id").sort_index()
    assert list(a.status) == list(b.status) and list(a.width) == list(b.width)
    assert list(a.height) == list(b.height) and a.width.max() == 1500
    ok = a.status == "ok"
    va, vb = np.stack(a.embedding[ok]), np.stack(b.embedding[ok])
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() >= 0.9999, cos
    big = [i for i in a.index if "/big/" in i]
    assert not np.allclose(np.stack(a.embedding[big]), np.stack(b.embedding[big])), \
        "the draft decode was not used"


def test_prefect_walks_task_parameters_in_time_independent_of_the_images():
    """Prefect visits every list, tuple and dataclass inside a task's parameters before
    running it; a shard or plan of item objects made that one visit per image (0.6 s
    for a 10,000-image shard). Their rows are one Arrow table: the walk must not grow
    with the images."""
    from datetime import UTC, datetime

    from prefect.utilities.collections import visit_collection

    from clipvec_tasks.job import RunPlan
    from clipvec_tasks.plan import make_plan
    from clipvec_tasks.sources import SourceItem

    def visits(n: int) -> int:
        items = [SourceItem(f"s3://b/{i}.jpg", f"s3://b/{i}.jpg", i, None,
                            datetime(2025, 1, 1, tzinfo=UTC)) for i in range(n)]
        plan = make_plan(items, None, 50, "s")
        count = 0

        def visit(_expr):
            nonlocal count
            count += 1

        visit_collection({"shard": plan.shards[0]}, visit_fn=visit, return_data=False)
        visit_collection({"run": RunPlan(plan, None, {})}, visit_fn=visit, return_data=False)
        return count, len(plan.shards)

    (small, shards_small), (large, shards_large) = visits(50), visits(5_000)
    # one visit per shard object in the plan at most, none per image
    assert large - small <= 4 * (shards_large - shards_small)
    assert large < 5_000
