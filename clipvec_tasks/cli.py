"""The ``clipvec`` command: models, embed, search, datasets show, export."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import ClipvecError


def cmd_models(args: argparse.Namespace) -> None:
    from .registry import list_models

    rows = [("name", "family", "dim", "input", "weights", "architecture")]
    for s in list_models():
        name = f"{s.name} (= {s.alias_of})" if s.alias_of else s.name
        rows.append((name, s.family, str(s.dim), str(s.input_size), s.weights, s.arch))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print("\nAny other torchvision classification architecture is accepted by its torchvision "
          "name (e.g. resnet50, convnext_tiny).")


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from .embedder import Embedder
    from .members import MemberConfig, WeightsConfig, load_member
    from .runtime import resolve_batch_size, resolve_device, resolve_precision
    from .shard import embed_items
    from .sources import list_images, read_bytes

    t0 = time.perf_counter()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.batch_size = resolve_batch_size(args.batch_size, device)
    weights = WeightsConfig(cache_dir=args.cache_dir) if args.cache_dir else WeightsConfig()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    embedder = Embedder([load_member(MemberConfig(n, args.pretrained), device, precision, weights)
                         for n in names])
    items = list(list_images(args.path))
    if not items:
        raise ClipvecError(f"'{args.path}' holds no images.")
    t1 = time.perf_counter()
    vectors, failed = [], []
    # the job's own stream: reads and decodes ahead, batched (on a GPU, decoded there)
    for b in embed_items(items, embedder, read_bytes, "embed", args.batch_size):
        status = b.column("status").to_pylist()
        ok = np.array([st == "ok" for st in status])
        failed += [(u, st, e) for u, st, e in zip(b.column("uri").to_pylist(), status,
                                                  b.column("error").to_pylist(), strict=True)
                   if st != "ok"]
        emb = b.column("embedding").values.to_numpy(zero_copy_only=False)
        vectors.append(emb.reshape(len(status), embedder.dim)[ok])
    t2 = time.perf_counter()
    print(f"models: {', '.join(names)} (weights: {args.pretrained or 'default'}, {precision})")
    print(f"device: {device}")
    print(f"images: {len(items)} ({len(items) - len(failed)} ok, {len(failed)} failed)")
    for uri, status, err in failed:
        print(f"  failed: {uri}: {status}: {err}")
    print(f"time: load {t1 - t0:.2f} s, embed {t2 - t1:.2f} s "
          f"({(len(items) - len(failed)) / max(t2 - t1, 1e-9):.1f} img/s)")
    arr = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    if not len(arr):
        return
    v = arr[0] if len(arr) == 1 else arr
    print(f"vector shape: {tuple(v.shape)}")
    print(f"first 10: {np.array2string(arr[0][:10], precision=4, separator=', ')}")
    print(f"mean: {float(arr.mean()):.6f}  std: {float(arr.std()):.6f}")
    if args.output:
        np.save(args.output, arr)
        print(f"saved: {args.output}")


def cmd_bench(args: argparse.Namespace) -> None:
    """img/s of each model's image tower on this machine (random input, steady state)."""
    import torch

    from .members import MemberConfig, WeightsConfig, load_member
    from .runtime import resolve_batch_size, resolve_device, resolve_precision

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    args.batch_size = resolve_batch_size(args.batch_size, device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"device: {device} ({where}), precision {precision}, batch {args.batch_size}")
    print(f"{'model':<32} {'dim':>5} {'img/s':>10}")
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        member = load_member(MemberConfig(name, args.pretrained or "random"), device, precision,
                             WeightsConfig())
        x = torch.randn(args.batch_size, 3, *member.preprocessing["image_size"], device=device)
        member.encode(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            member.encode(x)
            n += args.batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"{name:<32} {member.dim:>5} {n / (time.perf_counter() - t0):>10.1f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipvec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list every registered model")
    m.set_defaults(fn=cmd_models)
    e = sub.add_parser("embed", help="embed one image or a folder and print a summary")
    e.add_argument("path")
    e.add_argument("--models", default="open_clip_vit_b32", help="A or A,B (an ensemble)")
    e.add_argument("--pretrained", default=None, help="random, a checkpoint path, or a tag")
    e.add_argument("--device", default="auto", help="auto, cpu, gpu, cuda:N")
    e.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    e.add_argument("--batch_size", "--batch-size", type=int, default=None,
                   help="images per forward pass (default: 32 on CPU, 256 on GPU)")
    e.add_argument("--cache_dir", "--cache-dir", default=None)
    e.add_argument("--output", "-o", default=None, help="save the vectors as .npy")
    e.set_defaults(fn=cmd_embed)
    b = sub.add_parser("bench", help="img/s of each model on this machine")
    b.add_argument("--models", default="open_clip_vit_b32")
    b.add_argument("--device", default="auto")
    b.add_argument("--precision", default="auto")
    b.add_argument("--batch_size", "--batch-size", type=int, default=None,
                   help="images per forward pass (default: 32 on CPU, 256 on GPU)")
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--pretrained", default=None, help="default: random (speed is the same)")
    b.set_defaults(fn=cmd_bench)
    from . import cli_dataset

    cli_dataset.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ClipvecError as e:
        print(f"clipvec: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        pass


def entry() -> None:
    """The installed ``clipvec`` command: :func:`main`, then a quick exit."""
    main()
    from .runtime import freeze_heap_before_exit

    freeze_heap_before_exit()


if __name__ == "__main__":
    entry()
