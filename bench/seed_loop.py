"""The seed's way, as a baseline: one image at a time, upstream preprocess, fp32 by default.

usage: python bench/seed_loop.py CORPUS CHECKPOINT DEVICE [PRECISION] [LIMIT]
Prints one JSON line: images, seconds (the loop alone), img_per_s.
"""

import json
import sys
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image


def main() -> None:
    corpus, ckpt, device = sys.argv[1], sys.argv[2], sys.argv[3]
    precision = sys.argv[4] if len(sys.argv) > 4 else "fp32"
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else None
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=ckpt,
                                                                 device=device)
    model.eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    files = sorted(p for p in Path(corpus).rglob("*.jpg"))[:limit]
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype,
                                         enabled=dtype != torch.float32):
        for f in files:
            x = preprocess(Image.open(f)).unsqueeze(0).to(device)
            v = model.encode_image(x)
            v = (v / v.norm(dim=-1, keepdim=True)).float().cpu().numpy()
    dt = time.perf_counter() - t0
    print(json.dumps({"images": len(files), "seconds": dt, "img_per_s": len(files) / dt}))


if __name__ == "__main__":
    main()
