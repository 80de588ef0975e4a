"""One-shot device check: fidelity of the GPU path and throughput, all in one run.

    python bench/gpu_check.py --corpus DIR --device cuda --out results.json

Measures, over a realistic JPEG corpus and random weights:
- fidelity: the tensor path (nvJPEG + batched resize) against each member's
  upstream PIL transform, fp32; and bf16 against fp32;
- the model-only bound (bf16, batch 256) per model;
- clipvec's shard stream end to end (read -> decode -> embed -> Arrow rows
  written to a columnar file) per model, and for an ensemble;
- the seed's one-image loop (fp32) as the baseline.
It drives ``clipvec_tasks`` directly (no Prefect, no Lance: their wheels are not
on the device), so it measures the pipeline that the flow's shard tasks run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipvec_tasks.decode import decode_image
from clipvec_tasks.embedder import Embedder
from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from clipvec_tasks.shard import embed_items
from clipvec_tasks.sources import list_images, read_bytes


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _member(name: str, device: torch.device, precision: str):
    return load_member(MemberConfig(name, "random"), device, precision, WeightsConfig())


def fidelity(items, device, names, n=128) -> dict:
    out = {}
    for name in names:
        m32 = _member(name, device, "fp32")
        emb = Embedder([m32])
        pil = []
        for it in items[:n]:
            data = read_bytes(it.uri)
            img = decode_image(data).image
            pil.append(emb.preprocess(img))
        ref = emb.embed(pil)
        batches = list(embed_items(items[:n], emb, read_bytes, "fid", 64, 8,
                                   preprocess="tensor"))
        got = np.stack(pa.concat_tables([pa.Table.from_batches([b]) for b in batches])
                       .column("embedding").to_pylist())
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        mb = _member(name, device, "bf16")
        bf = Embedder([mb]).embed(pil)
        cos_bf = (ref * bf).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(bf, axis=1)
        out[name] = {"tensor_vs_pil_fp32_min_cos": float(cos.min()),
                     "tensor_vs_pil_fp32_mean_cos": float(cos.mean()),
                     "bf16_vs_fp32_min_cos": float(cos_bf.min()),
                     "bf16_vs_fp32_mean_cos": float(cos_bf.mean())}
        _log(f"fidelity {name}: {out[name]}")
        del m32, mb
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return out


def model_only(member, bs: int, seconds: float = 4.0) -> float:
    size = member.preprocessing["image_size"]
    x = torch.randn(bs, 3, *size, device=member.device).to(member.dtype)
    for _ in range(3):
        member.encode(x)
    _sync(member.device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        member.encode(x)
        n += bs
    _sync(member.device)
    return n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def end_to_end(items, embedder, bs: int, workers: int, out: Path, procs: int = 0) -> dict:
    # warm-up on a few batches (cuDNN/cuBLAS heuristics, nvJPEG handles, reader processes)
    for _ in embed_items(items[: 2 * bs], embedder, read_bytes, "warm", bs, workers,
                         read_processes=procs):
        pass
    _sync(embedder.device)
    t0 = time.perf_counter()
    writer, rows = None, 0
    for batch in embed_items(items, embedder, read_bytes, "bench", bs, workers,
                             read_processes=procs):
        if writer is None:
            writer = pq.ParquetWriter(out, batch.schema)
        writer.write_batch(batch)
        rows += batch.num_rows
    writer.close()
    dt = time.perf_counter() - t0
    return {"images": rows, "seconds": round(dt, 2), "img_per_s": round(rows / dt, 1)}


def prep_only(items, embedder, bs: int, workers: int) -> dict:
    """Read + decode + batched preprocessing without the model: the data path's own bound."""
    from clipvec_tasks.decode import DecodePolicy
    from clipvec_tasks.shard import _stage, _windows, prepared_stream

    policy = DecodePolicy()
    stream = torch.cuda.Stream(embedder.device) if embedder.device.type == "cuda" else None
    t0 = time.perf_counter()
    n = 0
    prepared = prepared_stream(items, embedder, read_bytes, policy, True, bs, workers)
    for window, _inputs, _ev in _stage(_windows(prepared, bs), embedder, policy, stream):
        n += len(window)
    _sync(embedder.device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 2), "img_per_s": round(n / dt, 1)}


def seed_loop(items, device, n: int) -> float:
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", device=device)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for it in items[:n]:
            x = preprocess(Image.open(it.uri.removeprefix("file://"))).unsqueeze(0).to(device)
            v = model.encode_image(x)
            (v / v.norm(dim=-1, keepdim=True)).cpu()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 2))
    p.add_argument("--models", default="open_clip_vit_b32,open_clip_vit_l14,open_clip_vit_h14")
    p.add_argument("--fidelity-models", default="open_clip_vit_b32,resnet152")
    p.add_argument("--ensemble", default="open_clip_vit_b32,open_clip_vit_l14")
    p.add_argument("--seed-images", type=int, default=512)
    p.add_argument("--sweep-workers", default="", help="e.g. 4,8,16: prep and end to end "
                   "of the first model at each count of decode workers")
    p.add_argument("--read-processes", default="", help="e.g. 0,4,8: end to end of the first "
                   "model with each count of reader processes (0: threads)")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args()
    device = torch.device(args.device)
    items = list(list_images(args.corpus))
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "images": len(items), "cpu_cores": os.cpu_count(),
                    "batch_size": args.batch_size, "decode_workers": args.workers}
    _log(f"{len(items)} images; {result['device']}")
    result["fidelity"] = fidelity(items, device, args.fidelity_models.split(","))
    tmp = Path(args.out).with_suffix(".parquet")
    if args.sweep_workers:
        m = _member(args.models.split(",")[0], device, "bf16")
        result["sweep"] = {}
        for w in [int(x) for x in args.sweep_workers.split(",")]:
            result["sweep"][w] = {"prep_only": prep_only(items, Embedder([m]), args.batch_size, w),
                                  "end_to_end": end_to_end(items, Embedder([m]), args.batch_size,
                                                           w, tmp)}
            _log(f"workers {w}: {result['sweep'][w]}")
        best = max(result["sweep"], key=lambda w: result["sweep"][w]["end_to_end"]["img_per_s"])
        args.workers = best
        result["decode_workers"] = best
        del m
    procs = 0
    if args.read_processes:
        m = _member(args.models.split(",")[0], device, "bf16")
        result["read_processes"] = {}
        for n in [int(x) for x in args.read_processes.split(",")]:
            result["read_processes"][n] = end_to_end(items, Embedder([m]), args.batch_size,
                                                     args.workers, tmp, n)
            _log(f"read processes {n}: {result['read_processes'][n]}")
        procs = max(result["read_processes"],
                    key=lambda n: result["read_processes"][n]["img_per_s"])
        result["chosen_read_processes"] = procs
        del m
    result["models"] = {}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        m = _member(name, device, "bf16")
        load_s = time.perf_counter() - t0
        bound = model_only(m, args.batch_size)
        e2e = end_to_end(items, Embedder([m]), args.batch_size, args.workers, tmp, procs)
        if "prep_only" not in result:
            result["prep_only"] = prep_only(items, Embedder([m]), args.batch_size, args.workers)
            _log(f"prep only: {result['prep_only']}")
        result["models"][name] = {"load_s": round(load_s, 1), "model_only_img_per_s":
                                  round(bound, 1), "end_to_end": e2e,
                                  "fraction_of_bound": round(e2e["img_per_s"] / bound, 3)}
        _log(f"{name}: {result['models'][name]}")
        Path(args.out).write_text(json.dumps(result, indent=1))
        del m
        torch.cuda.empty_cache() if device.type == "cuda" else None
    if args.ensemble:
        members = [_member(n, device, "bf16") for n in args.ensemble.split(",")]
        result["ensemble"] = {"members": args.ensemble, **end_to_end(
            items, Embedder(members), args.batch_size, args.workers, tmp, procs)}
        _log(f"ensemble: {result['ensemble']}")
        del members
    if args.seed_images:
        result["seed_loop_img_per_s"] = round(seed_loop(items, device, args.seed_images), 1)
        _log(f"seed loop: {result['seed_loop_img_per_s']} img/s")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
