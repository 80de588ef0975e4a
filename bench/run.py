"""clipvec's benchmark: end-to-end img/s against the model-only bound and the seed's loop,
all measured in one run on one machine.

    python bench/run.py --n 384                       # CPU, fp32 (ANCHORS' CPU case)
    python bench/run.py --device cuda --n 8192 --precision bf16 --batch-size 256

It builds a realistic JPEG corpus with ../shared/tools/make_corpus.py (or takes
--corpus), saves a random-weights ViT-B/32 checkpoint (no weights can be
downloaded), then times, as whole processes: the seed's one-image loop,
clip-retrieval's inference where an interpreter has it (``--clip-retrieval``; it pins
numpy<2 and pyarrow<16, so it lives in a venv of its own), ``flows/vectorize.py``
(start-up, Prefect and the commit included) twice: first on a fresh Prefect home,
whose database is created on first use, then again as later runs find it, and
the model alone. On a CPU with AVX-512 BF16 or AMX, an fp32 run also times clipvec
with runtime.precision=bf16 and the bf16 model-only bound (the issue's 3x case;
--no-bf16 leaves it out). Results: a table on stdout and JSON in --out.

    python -m venv --system-site-packages ../crvenv
    ../crvenv/bin/pip install clip-retrieval "setuptools<81"
    python bench/run.py --n 384 --clip-retrieval ../crvenv/bin/python
    python bench/large_photos.py .corpus/large64 64     # camera-sized JPEGs (12 MP)
    python bench/run.py --corpus .corpus/large64 --variant "draft=runtime.jpeg_draft=true"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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


def _clip_retrieval_python(arg: str | None) -> str | None:
    """The interpreter to run clip-retrieval with: --clip-retrieval, else this one if it has it."""
    if arg:
        return arg
    return sys.executable if importlib.util.find_spec("clip_retrieval") else None


def _clip_retrieval(python: str, corpus: Path, ckpt: Path, out: Path, args: argparse.Namespace,
                    n_images: int) -> float:
    """clip-retrieval's inference over the corpus (image embeddings only, same checkpoint,
    same batch size, one preprocessing worker per core); its wall time."""
    wall, _ = _timed([python, "-m", "clip_retrieval.cli", "inference",
                      "--input_dataset", str(corpus), "--output_folder", str(out),
                      "--clip_model", f"open_clip:ViT-B-32/{ckpt.resolve()}",
                      "--enable_text", "False", "--batch_size", str(args.batch_size),
                      "--num_prepro_workers", str(os.cpu_count() or 1)])
    import numpy as np

    rows = sum(np.load(f).shape[0] for f in sorted((out / "img_emb").glob("*.npy")))
    if rows != n_images:
        sys.exit(f"clip-retrieval embedded {rows} of {n_images} images")
    shutil.rmtree(out, ignore_errors=True)
    return wall


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
    p.add_argument("--clip-retrieval", default=None, metavar="PYTHON",
                   help="an interpreter with clip-retrieval installed (default: this one, "
                        "if it has it; else clip-retrieval is left out)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="also time clipvec (a later run) with these space-separated overrides, "
                        "e.g. --variant 'draft=runtime.jpeg_draft=true'")
    p.add_argument("--no-bf16", action="store_true",
                   help="on a CPU with AVX-512 BF16 or AMX, do not add the bf16 variant (and "
                        "its model-only bound) that an fp32 CPU run otherwise adds")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    bf16 = (args.device == "cpu" and args.precision == "fp32" and not args.no_bf16
            and _cpu_has_bf16() and not any(v.startswith("bf16=") for v in args.variant))
    if bf16:
        args.variant.append("bf16=runtime.precision=bf16")
    work = Path(tempfile.mkdtemp(prefix="clipvec-bench-"))
    corpus, ckpt = _corpus(args, work), _checkpoint()
    n_images = sum(1 for _ in corpus.rglob("*.jpg"))
    cr_python = _clip_retrieval_python(args.clip_retrieval)
    rows = []
    for rep in range(args.repeat):
        env = {"PREFECT_HOME": str(work / f"prefect{rep}"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        limit = [str(args.baseline_limit)] if args.baseline_limit else []
        wall, out = _timed([sys.executable, "bench/seed_loop.py", str(corpus), str(ckpt),
                            args.device, "fp32", *limit], env)
        seed = json.loads(out.strip().splitlines()[-1])
        cr_wall = (_clip_retrieval(cr_python, corpus, ckpt, work / f"cr{rep}", args, n_images)
                   if cr_python and not args.baseline_limit else None)

        # a fresh Prefect home, then the one it made (as later runs find it)
        walls = [_clipvec(args, corpus, ckpt, work / f"run{rep}-first.lance", env, [])[0]]
        cv_wall, cv_out = _clipvec(args, corpus, ckpt, work / f"run{rep}-later.lance", env, [])
        walls.append(cv_wall)
        m = re.search(r"([\d.]+) s in the flow, ([\d.]+) img/s", cv_out)
        steady = re.search(r"steady ([\d.]+) img/s", cv_out)
        variants = {}
        for spec in args.variant:
            name, _, overrides = spec.partition("=")
            v_wall, v_out = _clipvec(args, corpus, ckpt, work / f"run{rep}-{name}.lance", env,
                                     overrides.split())
            v_steady = re.search(r"steady ([\d.]+) img/s", v_out)
            variants[name] = {"overrides": overrides, "wall_s": round(v_wall, 2),
                              "steady_img_per_s": float(v_steady.group(1)) if v_steady else None}
        _, mo = _timed([sys.executable, "bench/model_only.py", "open_clip_vit_b32", str(ckpt),
                        args.device, args.precision, str(args.batch_size)], env)
        if bf16:
            _, mo16 = _timed([sys.executable, "bench/model_only.py", "open_clip_vit_b32",
                              str(ckpt), args.device, "bf16", str(args.batch_size)], env)
            variants["bf16"]["model_only_img_per_s"] = round(
                json.loads(mo16.strip().splitlines()[-1])["img_per_s"], 1)
        rows.append({
            "seed_loop_wall_s": round(wall, 2),
            "seed_loop_img_per_s": round(seed["img_per_s"], 1),
            "clip_retrieval_wall_s": round(cr_wall, 2) if cr_wall else None,
            "clipvec_first_run_wall_s": round(walls[0], 2),
            "clipvec_wall_s": round(walls[1], 2),
            "clipvec_flow_img_per_s": float(m.group(2)) if m else None,
            "clipvec_steady_img_per_s": float(steady.group(1)) if steady else None,
            "model_only_img_per_s": round(json.loads(mo.strip().splitlines()[-1])["img_per_s"], 1),
            "variants": variants,
        })
    result = {
        "machine": _machine(),
        "device": args.device, "precision": args.precision, "batch_size": args.batch_size,
        "images": n_images, "baseline_images": args.baseline_limit or n_images, "runs": rows,
    }
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result, indent=1))
    for r in rows:
        print(_report(r, whole=not args.baseline_limit))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags (Linux's /proc/cpuinfo; elsewhere, no flags)."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return name, flags


def _cpu_has_bf16(flags: set[str] | None = None) -> bool:
    return bool((_cpuinfo()[1] if flags is None else flags) & {"avx512_bf16", "amx_bf16"})


def _machine() -> str:
    """The CPU's model name, core count and whether it has bf16 instructions."""
    name, flags = _cpuinfo()
    bf16 = "with" if _cpu_has_bf16(flags) else "without"
    return f"{name}, {os.cpu_count()} cores, {bf16} AVX-512 BF16/AMX"


def _clipvec(args: argparse.Namespace, corpus: Path, ckpt: Path, sink: Path,
             env: dict[str, str], overrides: list[str]) -> tuple[float, str]:
    """``flows/vectorize.py`` over the corpus into ``sink`` (removed after): wall time, stdout."""
    cmd = [sys.executable, "flows/vectorize.py", f"source.uri={corpus}", f"sink.uri={sink}",
           "model=open_clip_vit_b32", f"model.members.0.pretrained={ckpt}",
           f"runtime.device={args.device}", f"runtime.precision={args.precision}",
           f"runtime.batch_size={args.batch_size}", *args.extra, *overrides]
    timed = _timed(cmd, env)
    shutil.rmtree(sink, ignore_errors=True)
    return timed


def _report(r: dict, whole: bool) -> str:
    """One run's comparison: whole processes (ratios to clipvec's later run) and steady state."""
    first, later = r["clipvec_first_run_wall_s"], r["clipvec_wall_s"]
    parts = [f"whole process: clipvec {later} s (first run on a fresh Prefect home {first} s)"]
    for name, key in (("seed loop", "seed_loop_wall_s"),
                      ("clip-retrieval", "clip_retrieval_wall_s")):
        if whole and r.get(key):
            parts.append(f"{name} {r[key]} s ({r[key] / later:.2f}x; {r[key] / first:.2f}x "
                         "against the first run)")
    cr = r.get("clip_retrieval_wall_s") if whole else None
    variants = "".join(
        f"\n{name} ({v['overrides']}): {v['wall_s']} s"
        + (f" ({cr / v['wall_s']:.2f}x against clip-retrieval)" if cr else "")
        + f", steady {v['steady_img_per_s']} img/s"
        + (f" vs model-only {v['model_only_img_per_s']} img/s"
           if v.get("model_only_img_per_s") else "")
        for name, v in r["variants"].items())
    return ("; ".join(parts) + f"\nsteady: clipvec {r['clipvec_steady_img_per_s']} img/s vs "
            f"model-only {r['model_only_img_per_s']} img/s; seed loop "
            f"{r['seed_loop_img_per_s']} img/s" + variants)


if __name__ == "__main__":
    main()
