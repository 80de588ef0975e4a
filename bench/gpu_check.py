"""One-shot device check: fidelity of the GPU path and throughput, all in one run.

    python bench/gpu_check.py --corpus DIR --device cuda --out results.json

Measures, over a realistic JPEG corpus and random weights:
- fidelity: the tensor path (nvJPEG + batched resize) against each member's
  upstream PIL transform, fp32, over corpus images and EXIF-rotated copies of
  some (all 8 orientations); and bf16 against fp32;
- the data path alone (read -> nvJPEG -> batched resize, no model), with the
  resize as batched matrix products and as the fused Triton kernels;
- the model-only bound (bf16, batch 256) per model;
- clipvec end to end per model and for an ensemble: the job's own functions
  (list -> plan -> embed shards into Lance fragments -> one commit), as the
  flow's tasks call them, without Prefect (not installed there). "cold" includes
  building the model and starting the reader processes; "warm" is a second run
  into a fresh dataset;
- the first model with a share of the JPEGs decoded and resized by the readers;
- optionally the seed's one-image loop (fp32) as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from clipvec_tasks import job as J
from clipvec_tasks import tensor_preprocess as TP
from clipvec_tasks.decode import DecodePolicy, decode_image
from clipvec_tasks.embedder import Embedder
from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from clipvec_tasks.shard import _tensor_stages, _windows, embed_items, prepared_stream
from clipvec_tasks.sources import list_images, read_bytes


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _member(name: str, device: torch.device, precision: str):
    return load_member(MemberConfig(name, "random"), device, precision, WeightsConfig())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rotated_copies(items, out: Path, n: int = 16) -> list:
    """Copies of ``n`` corpus JPEGs carrying EXIF orientations 1-8 (the GPU decoder
    ignores EXIF; clipvec turns them as Pillow's exif_transpose does)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for k, it in enumerate(items[:n]):
        exif = Image.Exif()
        exif[0x0112] = 1 + k % 8
        Image.open(it.uri.removeprefix("file://")).save(out / f"rot{k:02d}.jpg", exif=exif,
                                                        quality=90)
    return list(list_images(str(out)))


def fidelity(items, device, names) -> dict:
    out = {}
    for name in names:
        m32 = _member(name, device, "fp32")
        emb = Embedder([m32])
        pil = [emb.preprocess(decode_image(read_bytes(it.uri)).image) for it in items]
        ref = emb.embed(pil)
        batches = list(embed_items(items, emb, read_bytes, "fid", 64, 8, preprocess="tensor"))
        table = pa.Table.from_batches(batches)
        got = np.stack(table.column("embedding").to_pylist())
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        # half the JPEGs decoded and resized by the readers (runtime.cpu_decode_share)
        shared = pa.Table.from_batches(list(embed_items(
            items, emb, read_bytes, "fid", 64, 8, preprocess="tensor", cpu_share=0.5)))
        got_s = np.stack(shared.column("embedding").to_pylist())
        cos_s = (ref * got_s).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got_s, axis=1)
        mb = _member(name, device, "bf16")
        bf = Embedder([mb]).embed(pil)
        cos_bf = (ref * bf).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(bf, axis=1)
        rot = np.array(["rot" in u for u in table.column("id").to_pylist()])
        out[name] = {"images": len(items), "rotated": int(rot.sum()),
                     "tensor_vs_pil_fp32_min_cos": float(cos.min()),
                     "tensor_vs_pil_fp32_mean_cos": float(cos.mean()),
                     "rotated_min_cos": float(cos[rot].min()) if rot.any() else None,
                     "cpu_share_half_min_cos": float(cos_s.min()),
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


def prep_only(items, embedder, bs: int, read_processes: int) -> dict:
    """Read + nvJPEG + batched preprocessing, pipelined as in a run, without the model."""
    policy = DecodePolicy()
    t0 = time.perf_counter()
    n = 0
    prepared = prepared_stream(items, embedder, read_bytes, policy, True, bs, None,
                               read_processes)
    for window, _inputs, _event in _tensor_stages(_windows(prepared, bs), embedder, policy):
        n += len(window)
    _sync(embedder.device)
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 2), "img_per_s": round(n / dt, 1)}


def job_e2e(corpus: str, names: list[str], sink: Path, bs: int | None,
            shard_size: int | None, read_processes: int | None, device: str = "cuda",
            precision: str = "bf16", cpu_decode_share: float | None = 0.0) -> dict:
    """list -> plan -> shards into Lance fragments -> one commit: what the flow's tasks do."""
    import lance

    shutil.rmtree(sink, ignore_errors=True)
    job = J.JobConfig(source_uri=corpus, sink_uri=str(sink),
                      members=tuple(MemberConfig(n, "random") for n in names),
                      shard_size=shard_size, device=device, precision=precision, batch_size=bs,
                      read_processes=read_processes, cpu_decode_share=cpu_decode_share)
    t0 = time.perf_counter()
    items = J.list_source(job)
    model = J.fetch_weights(job)
    run = J.plan_run(job, items, model)
    run_id = uuid.uuid4().hex[:12]
    results = [J.run_shard(job, s, run.plan.plan_id, run_id) for s in run.pending]
    version = J.commit_run(job, run, results, model, run_id, {})
    dt = time.perf_counter() - t0
    rows = lance.dataset(str(sink)).count_rows()
    paths = {k: sum(r["decode_paths"].get(k, 0) for r in results)
             for k in ("device_decoded", "reader_resized")}
    return {"images": rows, "shards": len(results), "version": version,
            "seconds": round(dt, 2), "img_per_s": round(rows / dt, 1), **paths}


def _shares(arg: str) -> list[float | None]:
    """runtime.cpu_decode_share values from a comma list: numbers above 0, or auto (None)."""
    return [None if x == "auto" else float(x) for x in arg.split(",")
            if x and (x == "auto" or float(x) > 0)]


def e2e_pair(corpus, names, sink, **kw) -> dict:
    """A cold run (model built, readers started) then a warm one into a fresh dataset."""
    cold = job_e2e(corpus, names, sink, **kw)
    warm = job_e2e(corpus, names, sink, **kw)
    return {"cold": cold, "warm": warm}


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
    p.add_argument("--precision", default="bf16")
    p.add_argument("--models", default="open_clip_vit_b32,open_clip_vit_l14,open_clip_vit_h14")
    p.add_argument("--fidelity-models", default="open_clip_vit_b32,resnet152")
    p.add_argument("--ensemble", default="open_clip_vit_b32,open_clip_vit_l14")
    p.add_argument("--read-processes", default="0,8",
                   help="reader process counts tried with the first model (0: threads)")
    p.add_argument("--shard-sizes", default="1000",
                   help="shard sizes tried with the first model, besides auto")
    p.add_argument("--fused", default="0,1",
                   help="the GPU resize as matrix products (0) and as fused Triton kernels (1)")
    p.add_argument("--cpu-shares", default="0.1,0.2,auto",
                   help="runtime.cpu_decode_share values tried with the first model")
    p.add_argument("--model-shares", default="auto",
                   help="runtime.cpu_decode_share values also tried (warm) with the other models")
    p.add_argument("--seed-images", type=int, default=0)
    p.add_argument("--work", default="/tmp/clipvec-bench")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(args.work)
    items = list(list_images(args.corpus))
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "images": len(items), "cpu_cores": os.cpu_count(),
                    "batch_size": args.batch_size}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    _log(f"{len(items)} images; {result['device']}")
    fid_items = items[:112] + rotated_copies(items[200:], work / "rotated")
    result["fidelity"] = fidelity(fid_items, device, args.fidelity_models.split(","))
    save()
    first = args.models.split(",")[0]
    m = _member(first, device, args.precision)
    procs = [int(x) for x in args.read_processes.split(",")]
    result["prep_only"] = {}
    fused_modes = [bool(int(x)) for x in args.fused.split(",")]
    for rp in procs:
        prep_only(items[:1024], Embedder([m]), args.batch_size, rp)  # warm-up
        for fused in fused_modes:
            TP._FUSED["ok"] = fused
            prep_only(items[:512], Embedder([m]), args.batch_size, rp)  # compile the kernels
            key = f"read_processes={rp},fused={int(fused)}"
            result["prep_only"][key] = prep_only(items, Embedder([m]), args.batch_size, rp)
            result["prep_only"][key]["fused_still_on"] = TP._FUSED["ok"]  # off: it fell back
            _log(f"prep only {key}: {result['prep_only'][key]}")
    TP._FUSED["ok"] = fused_modes[-1]
    save()
    result["model_only"] = {first: round(model_only(m, args.batch_size), 1)}
    del m
    torch.cuda.empty_cache() if device.type == "cuda" else None
    sink = work / "bench.lance"
    run_kw = {"device": args.device, "precision": args.precision, "bs": args.batch_size}
    result["e2e_" + first] = {}
    for rp in procs:
        for ss in [None] + [int(x) for x in args.shard_sizes.split(",") if x]:
            for fused in fused_modes:
                TP._FUSED["ok"] = fused
                key = f"read_processes={rp},shard_size={ss or 'auto'},fused={int(fused)}"
                result["e2e_" + first][key] = r = e2e_pair(args.corpus, [first], sink,
                                                           shard_size=ss, read_processes=rp,
                                                           **run_kw)
                _log(f"{first} {key}: {r}")
                save()
    TP._FUSED["ok"] = fused_modes[-1]
    best = max(result["e2e_" + first].items(), key=lambda kv: kv[1]["warm"]["img_per_s"])[0]
    rp = int(best.split(",")[0].split("=")[1])
    result["fused_resize"] = TP._FUSED["ok"]
    shares = _shares(args.cpu_shares)
    if shares:
        result["cpu_decode_share_" + first] = {}
        for share in shares:
            r = e2e_pair(args.corpus, [first], sink, shard_size=None, read_processes=rp,
                         cpu_decode_share=share, **run_kw)
            result["cpu_decode_share_" + first][str(share or "auto")] = r
            _log(f"{first} cpu_decode_share={share}: {r}")
            save()
    result["chosen_read_processes"] = rp
    J._EMBEDDERS.clear()
    torch.cuda.empty_cache() if device.type == "cuda" else None
    result["models"] = {}
    for name in args.models.split(",")[1:]:
        m = _member(name, device, args.precision)
        bound = model_only(m, args.batch_size)
        del m
        r = e2e_pair(args.corpus, [name], sink, shard_size=None, read_processes=rp, **run_kw)
        r["model_only_img_per_s"] = round(bound, 1)
        r["fraction_of_bound"] = round(r["warm"]["img_per_s"] / bound, 3)
        for share in _shares(args.model_shares):  # warm: the model is loaded, readers up
            w = job_e2e(args.corpus, [name], sink, shard_size=None, read_processes=rp,
                        cpu_decode_share=share, **run_kw)
            w["fraction_of_bound"] = round(w["img_per_s"] / bound, 3)
            r.setdefault("cpu_decode_share", {})[str(share or "auto")] = w
        result["models"][name] = r
        _log(f"{name}: {r}")
        save()
        J._EMBEDDERS.clear()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    if args.ensemble:
        names = args.ensemble.split(",")
        result["ensemble"] = {"members": names, **e2e_pair(
            args.corpus, names, sink, shard_size=None, read_processes=rp, **run_kw)}
        _log(f"ensemble: {result['ensemble']}")
        J._EMBEDDERS.clear()
        save()
    if args.seed_images:
        result["seed_loop_img_per_s"] = round(seed_loop(items, device, args.seed_images), 1)
        _log(f"seed loop: {result['seed_loop_img_per_s']} img/s")
    save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
