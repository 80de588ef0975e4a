"""clipvec's benchmark: end-to-end img/s against the model-only bound and the seed's loop,
all measured in one run on one machine.

    python bench/run.py --n 384                       # CPU, fp32 (ANCHORS' CPU case)
    python bench/run.py --device cuda --n 8192 --precision bf16 --batch-size 256

It builds a realistic JPEG corpus with ../shared/tools/make_corpus.py (or takes
--corpus), saves a random-weights ViT-B/32 checkpoint (no weights can be
downloaded), then times, as whole processes: the seed's one-image loop,
``flows/vectorize.py`` (start-up, Prefect and the commit included), and the
model alone. Results: a table on stdout and JSON in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_CORPUS = ROOT.parent / "shared" / "tools" / "make_corpus.py"
PHOTOS = ROOT.parent / "shared" / "images" / "photos"


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                       cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return dt, p.stdout


def _corpus(args: argparse.Namespace, work: Path) -> Path:
    if args.corpus:
        return Path(args.corpus)
    out = ROOT / ".corpus" / f"c{args.n}"
    if not out.is_dir():
        subprocess.run([sys.executable, str(MAKE_CORPUS), str(PHOTOS), str(out), str(args.n)],
                       check=True)
    return out


def _checkpoint() -> Path:
    path = ROOT / ".corpus" / "vit_b32_random.pt"
    if not path.is_file():
        code = ("import torch, open_clip; torch.manual_seed(0); "
                f"torch.save(open_clip.create_model('ViT-B-32').state_dict(), '{path}')")
        subprocess.run([sys.executable, "-c", code], check=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=384)
    p.add_argument("--corpus")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--baseline-limit", type=int, default=None,
                   help="images for the seed loop (it is slow on a GPU)")
    p.add_argument("--extra", nargs="*", default=[], help="more vectorize.py overrides")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipvec-bench-"))
    corpus, ckpt = _corpus(args, work), _checkpoint()
    n_images = sum(1 for _ in corpus.rglob("*.jpg"))
    env = {"PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    rows = []
    for rep in range(args.repeat):
        limit = [str(args.baseline_limit)] if args.baseline_limit else []
        wall, out = _timed([sys.executable, "bench/seed_loop.py", str(corpus), str(ckpt),
                            args.device, "fp32", *limit], env)
        seed = json.loads(out.strip().splitlines()[-1])
        sink = work / f"run{rep}.lance"
        cmd = [sys.executable, "flows/vectorize.py", f"source.uri={corpus}", f"sink.uri={sink}",
               "model=open_clip_vit_b32", f"model.members.0.pretrained={ckpt}",
               f"runtime.device={args.device}", f"runtime.precision={args.precision}",
               f"runtime.batch_size={args.batch_size}", *args.extra]
        cv_wall, cv_out = _timed(cmd, env)
        m = re.search(r"([\d.]+) s in the flow, ([\d.]+) img/s", cv_out)
        steady = re.search(r"steady ([\d.]+) img/s", cv_out)
        _, mo = _timed([sys.executable, "bench/model_only.py", "open_clip_vit_b32", str(ckpt),
                        args.device, args.precision, str(args.batch_size)], env)
        rows.append({
            "seed_loop_wall_s": round(wall, 2),
            "seed_loop_img_per_s": round(seed["img_per_s"], 1),
            "clipvec_wall_s": round(cv_wall, 2),
            "clipvec_flow_img_per_s": float(m.group(2)) if m else None,
            "clipvec_steady_img_per_s": float(steady.group(1)) if steady else None,
            "model_only_img_per_s": round(json.loads(mo.strip().splitlines()[-1])["img_per_s"], 1),
        })
        shutil.rmtree(sink, ignore_errors=True)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores",
        "device": args.device, "precision": args.precision, "batch_size": args.batch_size,
        "images": n_images, "baseline_images": args.baseline_limit or n_images, "runs": rows,
    }
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result, indent=1))
    for r in rows:
        ratio = r["seed_loop_wall_s"] / r["clipvec_wall_s"] if not args.baseline_limit else None
        print(f"whole process: seed loop {r['seed_loop_wall_s']} s, clipvec {r['clipvec_wall_s']} s"
              + (f" ({ratio:.2f}x)" if ratio else "")
              + f"; steady: clipvec {r['clipvec_steady_img_per_s']} img/s vs model-only "
              f"{r['model_only_img_per_s']} img/s; seed loop {r['seed_loop_img_per_s']} img/s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
