"""Where the GPU data path spends its time: each stage alone, then fed by threads or processes.

    python bench/gpu_diag.py --corpus DIR [--device cuda]

1. GPU JPEG decode alone (bytes already in memory, batches of 256, synchronised; the
   first pass over the corpus is reported apart: it pays nvJPEG's warm-up);
2. the batched resize/normalise alone (ViT-B/32's transform) on decoded images;
3. CPU JPEG decode with Pillow in N threads (Pillow releases the GIL while decoding);
4. feeding bytes + sha256 + header parse with N threads vs N processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import torch


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _read_one(path: str):
    from clipvec_tasks.jpeg import jpeg_info

    with open(path, "rb") as f:
        data = f.read()
    return data, hashlib.sha256(data).hexdigest(), jpeg_info(data)


def _read_chunk(paths: list[str]):
    return [_read_one(p) for p in paths]


def _pil_decode(data: bytes):
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--out", default="gpu_diag.json")
    args = p.parse_args()
    dev = torch.device(args.device)
    files = sorted(str(x) for x in Path(args.corpus).rglob("*.jpg"))
    blobs = [Path(f).read_bytes() for f in files]
    n = len(blobs)
    res: dict = {"images": n, "cores": os.cpu_count()}
    from torchvision.io import ImageReadMode, decode_jpeg

    from clipvec_tasks.tensor_preprocess import TensorTransform

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    # torchvision's GPU decoder ignores apply_exif_orientation (clipvec turns images
    # itself): a first pass over the corpus warms nvJPEG up, the second is timed
    decoded = []
    for rep in range(2):
        decoded = []
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(0, n, args.bs):
            decoded.append(decode_jpeg(tensors[i:i + args.bs], mode=ImageReadMode.RGB,
                                       device=dev))
        _sync(dev)
        res["gpu_decode_warmup_img_per_s" if rep == 0 else "gpu_decode_img_per_s"] = round(
            n / (time.perf_counter() - t0), 1)
    tt = TensorTransform(224, 224, "bicubic", (0.48, 0.45, 0.40), (0.26, 0.26, 0.27))
    tt(decoded[0], torch.bfloat16)
    _sync(dev)
    t0 = time.perf_counter()
    for batch in decoded:
        tt(batch, torch.bfloat16)
    _sync(dev)
    res["transform_img_per_s"] = round(n / (time.perf_counter() - t0), 1)
    print(json.dumps(res), flush=True)
    some = blobs[:4096]
    for w in (4, 8, 16):
        with ThreadPoolExecutor(w) as ex:
            t0 = time.perf_counter()
            list(ex.map(_pil_decode, some, chunksize=16))
            res[f"pil_decode_threads{w}_img_per_s"] = round(len(some) / (time.perf_counter() - t0),
                                                            1)
    for w in (4, 8):
        chunks = [files[i:i + 64] for i in range(0, n, 64)]
        with ThreadPoolExecutor(w) as ex:
            t0 = time.perf_counter()
            sum(len(c) for c in ex.map(_read_chunk, chunks))
            res[f"feed_threads{w}_img_per_s"] = round(n / (time.perf_counter() - t0), 1)
        with ProcessPoolExecutor(w) as ex:
            list(ex.map(_read_chunk, chunks[:w]))  # start the workers
            t0 = time.perf_counter()
            sum(len(c) for c in ex.map(_read_chunk, chunks))
            res[f"feed_processes{w}_img_per_s"] = round(n / (time.perf_counter() - t0), 1)
    print(json.dumps(res, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
