"""``clipvec datasets show`` and ``clipvec export``: look into a dataset, hand it on."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import ClipvecError


def _open(uri: str):
    from .dataset import open_dataset, read_metadata

    ds = open_dataset(uri)
    if ds is None:
        raise ClipvecError(f"There is no Lance dataset at '{uri}'.")
    return ds, read_metadata(ds)


def cmd_show(args: argparse.Namespace) -> None:
    import pyarrow.compute as pc

    ds, meta = _open(args.dataset)
    model = meta.get("model", {})
    print(f"dataset: {args.dataset}")
    versions = ", ".join(str(v["version"]) for v in ds.versions())
    print(f"version: {ds.version} (versions: {versions})")
    statuses = ds.to_table(columns=["status"]).column("status")
    counts = pc.value_counts(statuses).to_pylist()
    print(f"rows: {ds.count_rows()}  "
          + "  ".join(f"{c['values']}: {c['counts']}" for c in sorted(
              counts, key=lambda c: -c["counts"])))
    print(f"dim: {model.get('dim')}  (fingerprint {meta.get('model_fingerprint')})")
    for m in model.get("members", []):
        w = m["weights"]
        src = w.get("tag") or w.get("source") or f"random seed {w.get('seed')}"
        print(f"  member {m['name']}: {m['family']} {m['arch']}, weights {src}"
              f"{'' if w.get('pretrained') else ' (NOT pretrained)'}, dim {m['dim']} at "
              f"offset {m['offset']}, {'unit-norm' if m.get('normalize') else 'raw'}")
    size = sum(_frag_size(f) for f in ds.get_fragments())
    print(f"data size: {_human(size)}")
    print(f"source: {meta.get('source', {}).get('uri')}  clipvec {meta.get('clipvec_version')}")


def _frag_size(frag: Any) -> int:
    return sum(getattr(df, "file_size_bytes", 0) or 0 for df in frag.metadata.files)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_export(args: argparse.Namespace) -> None:
    """Write the ok rows' vectors for faiss/autofaiss users: Parquet or .npy (+ ids)."""
    import numpy as np
    import pyarrow.parquet as pq

    ds, _ = _open(args.dataset)
    table = ds.to_table(columns=["id", "uri", "embedding"], filter="status = 'ok'")
    if args.format == "parquet":
        pq.write_table(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}")
        return
    emb = table.column("embedding").combine_chunks()
    arr = emb.values.to_numpy().reshape(len(emb), -1).astype(np.float32)
    np.save(args.output, arr)
    ids_path = args.output.removesuffix(".npy") + ".ids.json"
    with open(ids_path, "w") as f:
        json.dump(table.column("uri").to_pylist(), f)
    print(f"wrote {arr.shape} to {args.output} and row uris to {ids_path}")


def cmd_search(args: argparse.Namespace) -> None:
    from .members import WeightsConfig
    from .search import contact_sheet, search

    ds, _ = _open(args.dataset)
    cache = WeightsConfig(cache_dir=args.cache_dir) if args.cache_dir else WeightsConfig()
    hits = search(ds, args.text, args.k, cache)
    print(f"{'rank':>4}  {'score':>7}  uri")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:>7.4f}  {h.uri}")
    if args.html:
        contact_sheet(hits, args.text, args.html)
        print(f"contact sheet: {args.html}")


def cmd_index(args: argparse.Namespace) -> None:
    from .search import build_index

    ds, _ = _open(args.dataset)
    build_index(ds, args.partitions, args.sub_vectors)
    print(f"indexed {ds.count_rows()} rows of {args.dataset} (IVF_PQ, cosine); search now "
          "uses it when every member is a CLIP model")


def add_commands(sub: Any) -> None:
    d = sub.add_parser("datasets", help="inspect datasets")
    dsub = d.add_subparsers(dest="datasets_command", required=True)
    show = dsub.add_parser("show", help="versions, rows by status, model, size")
    show.add_argument("dataset")
    show.set_defaults(fn=cmd_show)
    se = sub.add_parser("search", help="text-to-image search with the dataset's own model")
    se.add_argument("dataset")
    se.add_argument("text")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--html", default=None, help="also write a contact sheet of thumbnails")
    se.add_argument("--cache_dir", "--cache-dir", default=None)
    se.set_defaults(fn=cmd_search)
    ix = dsub.add_parser("index", help="build a vector index for fast search on large datasets")
    ix.add_argument("dataset")
    ix.add_argument("--partitions", type=int, default=None)
    ix.add_argument("--sub-vectors", type=int, default=None)
    ix.set_defaults(fn=cmd_index)
    ex = sub.add_parser("export", help="write ok rows' vectors as Parquet or .npy")
    ex.add_argument("dataset")
    ex.add_argument("--format", choices=("parquet", "npy"), default="parquet")
    ex.add_argument("--output", "-o", required=True)
    ex.set_defaults(fn=cmd_export)
