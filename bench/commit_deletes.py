"""How a commit's deletions (changed or deleted inputs) scale with the dataset's fragments.

    python bench/commit_deletes.py [--fragments 2000] [--rows 500]

Builds a dataset of ``fragments`` fragments (one per shard, as runs write them) and
times, for a few numbers of ids to delete, the deletion step of ``dataset.commit``
(computing the fragments' new deletion files; nothing is committed) two ways, in the
same run: every fragment given the whole ``id IN (...)`` predicate (clipvec before
2026-11-27), and ``dataset._delete_rows`` (one scan finds the fragments that hold the
ids; each is given only its own).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipvec_tasks import dataset  # noqa: E402


def _every_fragment(ds, ids: set[str]) -> int:
    pred = "id IN (" + ",".join(dataset._quote(i) for i in sorted(ids)) + ")"
    touched = 0
    for frag in ds.get_fragments():
        after = frag.delete(pred)
        if after is None or after.deletion_file != frag.metadata.deletion_file:
            touched += 1
    return touched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fragments", type=int, default=2000)
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--ids", default="1,100,10000", help="numbers of ids to delete")
    p.add_argument("--out")
    args = p.parse_args()
    import lance

    work = Path(tempfile.mkdtemp(prefix="clipvec-deletes-"))
    n = args.fragments * args.rows
    ids = [f"s3://bucket/photos/{i // 1000:06d}/{i:09d}.jpg" for i in range(n)]
    table = pa.table({"id": ids, "x": pa.array(range(n), pa.int64())})
    ds = lance.write_dataset(table, str(work / "d.lance"), max_rows_per_file=args.rows)
    rng = random.Random(0)
    rows = []
    for k in (int(x) for x in args.ids.split(",")):
        doomed = set(rng.sample(ids, k))
        t0 = time.perf_counter()
        before = _every_fragment(ds, doomed)
        t1 = time.perf_counter()
        removed, updated = dataset._delete_rows(ds, doomed)
        t2 = time.perf_counter()
        assert before == len(removed) + len(updated), (before, len(removed), len(updated))
        rows.append({"ids": k, "fragments_touched": before,
                     "every_fragment_s": round(t1 - t0, 3), "targeted_s": round(t2 - t1, 3)})
        print(f"{k} ids ({before} fragments hold them): every fragment {t1 - t0:.2f} s, "
              f"targeted {t2 - t1:.2f} s ({(t1 - t0) / (t2 - t1):.1f}x)", flush=True)
    result = {"fragments": args.fragments, "rows_per_fragment": args.rows, "runs": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
