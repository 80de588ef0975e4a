"""The model-only bound: steady-state img/s of clipvec's loaded image tower on random input.

usage: python bench/model_only.py MODEL CHECKPOINT DEVICE PRECISION BATCH [SECONDS]
"""

import json
import sys
import time

import torch

from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from clipvec_tasks.runtime import resolve_device, resolve_precision


def main() -> None:
    name, ckpt, dev, prec, bs = sys.argv[1:6]
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 8.0
    device = resolve_device(dev)
    member = load_member(MemberConfig(name, ckpt), device, resolve_precision(prec, device),
                         WeightsConfig())
    size = member.preprocessing["image_size"]
    x = torch.randn(int(bs), 3, *size, device=device)
    for _ in range(3):
        member.encode(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        member.encode(x)
        n += int(bs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"img_per_s": n / (time.perf_counter() - t0), "batch": int(bs)}))


if __name__ == "__main__":
    main()
