"""What planning a run costs as the source grows: time and peak memory.

    python bench/plan_scale.py [--n 2000000] [--out results.json]
    python bench/plan_scale.py --n 2000000 --baseline-repo /path/to/older/checkout

Planning is the part of a run whose memory grows with the source: the listing is
held whole (it is frozen, and its hash names the run's staging area for resume), and
on a rerun so are the dataset's fingerprints. This times, each in a fresh process
whose peak resident memory is read from the OS, the steps ``job.plan_run`` takes:
collect the listing (from a generator of S3-like items, as ``sources.list_images``
yields them), read the fingerprints from a Lance dataset, compare, cut into shards.

Cases: a first run (no dataset); a rerun where nothing changed; a rerun where 1% of
the images changed and 0.1% were deleted. ``--baseline-repo`` runs the same cases
with another checkout's ``clipvec_tasks`` in the same invocation, for a comparison
measured on one machine at one time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CASES = ("first_run", "rerun_unchanged", "rerun_1pct_changed")


def _uri(i: int) -> str:
    return f"s3://bucket/photos/{i // 1000:06d}/{i:09d}.jpg"


def _items(n: int, changed_every: int = 0, skip_every: int = 0):
    from clipvec_tasks.sources import SourceItem

    for i in range(n):
        if skip_every and i % skip_every == 0:
            continue
        size = 40_000 + i % 10_000
        etag = f"{i:032x}"
        if changed_every and i % changed_every == 1:
            etag = f"{i + 1:032x}"
        u = _uri(i)
        yield SourceItem(u, u, size, etag, T0 + timedelta(seconds=i))


def _make_dataset(n: int, path: str) -> None:
    import lance
    import pyarrow as pa

    chunk = 500_000

    def batches():
        for s in range(0, n, chunk):
            r = range(s, min(n, s + chunk))
            yield pa.record_batch({
                "id": pa.array([_uri(i) for i in r], pa.string()),
                "size": pa.array([40_000 + i % 10_000 for i in r], pa.int64()),
                "etag": pa.array([f"{i:032x}" for i in r], pa.string()),
                "mtime": pa.array([T0 + timedelta(seconds=i) for i in r],
                                  pa.timestamp("us", tz="UTC")),
            })

    schema = next(batches()).schema
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), path,
                        max_rows_per_file=100_000)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(case: str, n: int, dataset_path: str) -> None:
    """One case in this (fresh) process; prints a JSON line."""
    import lance  # noqa: F401  (imports are not the plan's memory)

    from clipvec_tasks import dataset, plan
    base = _peak_mb()
    t0 = time.perf_counter()
    collect = getattr(plan, "listing_table", list)
    if case == "first_run":
        listing = collect(_items(n))
        existing = None if collect is not list else {}  # before the Arrow plan: a dict
    else:
        changed_every = 100 if case == "rerun_1pct_changed" else 0
        skip_every = 1000 if case == "rerun_1pct_changed" else 0
        listing = collect(_items(n, changed_every, skip_every))
        existing = dataset.fingerprints(dataset.open_dataset(dataset_path))
    t_listed = time.perf_counter()
    p = plan.make_plan(listing, existing, 10_000, "bench")
    del listing, existing
    t_planned = time.perf_counter()
    print(json.dumps({"case": case, "listed": p.listed, "todo": p.todo,
                      "changed": len(p.changed_ids), "deleted": len(p.deleted_ids),
                      "shards": len(p.shards),
                      "seconds_listing_and_fingerprints": round(t_listed - t0, 2),
                      "seconds_plan": round(t_planned - t_listed, 2),
                      "seconds": round(t_planned - t0, 2),
                      "peak_mb_above_imports": round(_peak_mb() - base),
                      "bytes_per_listed_image": round((_peak_mb() - base) * 2**20 / n)}))


def _long_ids() -> None:
    """Plan against a dataset whose ids hold more than 2 GB of text (600,000 ids of 4 KB:
    as much text as ~45 million ids of 50 characters), where Arrow's set lookups over
    plain strings overflow; prints what the plan found (about 8 GB of memory)."""
    import pyarrow as pa

    from clipvec_tasks import plan
    from clipvec_tasks.sources import LISTING

    n, pad = 600_000, "x" * 4000

    def batch(lo: int, hi: int) -> pa.RecordBatch:
        ids = pa.array([f"s3://b/{i:09d}{pad}.jpg" for i in range(lo, hi)], pa.string())
        return pa.record_batch([ids, pa.nulls(hi - lo, pa.string()),
                                pa.array([1] * (hi - lo), pa.int64()),
                                pa.array(["e"] * (hi - lo)),
                                pa.nulls(hi - lo, LISTING.field("mtime").type)],
                               schema=LISTING)

    spans = [(s, min(n, s + 50_000)) for s in range(0, n, 50_000)]
    existing = pa.Table.from_batches([batch(a, b) for a, b in spans]).drop_columns(["uri"])
    # listed: all but the last 10 (deleted from the source), and 5 new images
    listing = pa.Table.from_batches([batch(a, min(b, n - 10)) for a, b in spans]
                                    + [batch(n, n + 5)])
    t0 = time.perf_counter()
    p = plan.make_plan(listing, existing, 10_000, "bench")
    print(json.dumps({"id_text_gb": round(existing.column("id").nbytes / 1e9, 2),
                      "todo": p.todo, "deleted": len(p.deleted_ids),
                      "changed": len(p.changed_ids),
                      "seconds": round(time.perf_counter() - t0, 1)}))


def _run_cases(repo: Path, n: int, dataset_path: str) -> dict:
    out = {}
    for case in CASES:
        env = {**os.environ, "PYTHONPATH": str(repo)}
        r = subprocess.run([sys.executable, __file__, "--child", case, "--n", str(n),
                            "--dataset", dataset_path], env=env, capture_output=True,
                           text=True, check=False)
        if r.returncode:
            raise SystemExit(f"{case} failed in {repo}:\n{r.stderr[-3000:]}")
        out[case] = json.loads(r.stdout.strip().splitlines()[-1])
        print(repo.name, json.dumps(out[case]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000)
    p.add_argument("--baseline-repo", help="another checkout, measured in the same run")
    p.add_argument("--out")
    p.add_argument("--long-ids", action="store_true",
                   help="only plan against ids of over 2 GB of text (expects todo 5, deleted 10)")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.n, args.dataset)
        return
    if args.long_ids:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        _long_ids()
        return
    here = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="clipvec-plan-"))
    try:
        sys.path.insert(0, str(here))
        path = str(work / "d.lance")
        t0 = time.perf_counter()
        _make_dataset(args.n, path)
        print(f"dataset of {args.n:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
        results = {"machine": f"{os.cpu_count()} cores", "n": args.n,
                   "clipvec": _run_cases(here, args.n, path)}
        if args.baseline_repo:
            results["baseline"] = _run_cases(Path(args.baseline_repo).resolve(), args.n, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
