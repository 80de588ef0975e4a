"""Where the GPU data path's time goes, kernel by kernel, and each stage alone.

    python bench/gpu_profile.py --corpus DIR [--batches 16]

1. nvJPEG batched decode alone (bytes in memory, synchronised), per batch;
2. the batched resize alone (ViT-B/32's transform) on decoded images: matrix
   products (fp32 and TF32, group sizes) and the fused Triton kernels, per batch;
3. torch.profiler over the pipelined data path (reads, decode thread, resize
   thread), CUDA kernels sorted by their total time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clipvec_tasks.decode import DecodePolicy
from clipvec_tasks.embedder import Embedder
from clipvec_tasks.jpeg import decode_jpegs_on_device
from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from clipvec_tasks.shard import _tensor_stages, _windows, prepared_stream
from clipvec_tasks.sources import list_images, read_bytes


def _timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--out", default="gpu_profile.json")
    args = p.parse_args()
    dev = torch.device("cuda")
    items = list(list_images(args.corpus))[: args.bs * args.batches]
    blobs = [read_bytes(i.uri) for i in items[: args.bs]]
    res: dict = {"batch": args.bs}
    res["decode_ms_per_batch"] = round(1e3 * _timed(
        lambda: decode_jpegs_on_device(blobs, dev, [1] * len(blobs)), 10), 2)
    images = decode_jpegs_on_device(blobs, dev, [1] * len(blobs))
    member = load_member(MemberConfig("open_clip_vit_b32", "random"), dev, "bf16",
                         WeightsConfig())
    tt = member.tensor_transform
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        res[f"resize_ms_per_batch_tf32={tf32}"] = round(1e3 * _timed(
            lambda: tt(images, torch.bfloat16), 10), 2)
    torch.backends.cuda.matmul.allow_tf32 = False
    for g in (32, 128, 256):
        res[f"resize_ms_per_batch_group={g}"] = round(1e3 * _timed(
            lambda g=g: tt(images, torch.bfloat16, group=g), 10), 2)
    from clipvec_tasks import tensor_preprocess as TP

    TP._FUSED["ok"] = True  # the Triton kernels; falls back (and says so) if they fail
    res["resize_ms_per_batch_fused"] = round(1e3 * _timed(
        lambda: tt(images, torch.bfloat16), 10), 2)
    res["fused_still_on"] = TP._FUSED["ok"]
    TP._FUSED["ok"] = False
    x = torch.randn(args.bs, 3, 224, 224, device=dev, dtype=member.dtype)
    res["model_ms_per_batch"] = round(1e3 * _timed(lambda: member.encode(x), 10), 2)
    print(json.dumps(res, indent=1), flush=True)
    emb = Embedder([member])
    policy = DecodePolicy()

    def run() -> None:
        prepared = prepared_stream(items, emb, read_bytes, policy, True, args.bs, None, 8)
        for _ in _tensor_stages(_windows(prepared, args.bs), emb, policy):
            pass
        torch.cuda.synchronize()

    run()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
    try:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=30)
    except Exception:  # older torch
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    print(table, flush=True)
    res["profile_table"] = table
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
