"""What Prefect spends on a shard task's parameters before the task runs.

    python bench/task_params.py [--n 100000] [--shard 10000] [--baseline-repo PATH]

Prefect walks every task's parameters twice before running it (to record upstream
inputs, then to resolve futures), visiting each list, tuple and dataclass inside.
This times both walks, in this process and without a server, for one
``embed-shard`` task's shard and for the commit task's ``RunPlan`` of ``n`` new
images, with ``clipvec_tasks`` from this checkout and, in the same run, from
``--baseline-repo`` (each in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _child(n: int, shard_size: int) -> None:
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import plan_scale
    from prefect.utilities.engine import collect_task_run_inputs_sync, resolve_inputs_sync

    from clipvec_tasks import job, plan

    items = list(plan_scale._items(n))
    existing = None if hasattr(plan, "listing_table") else {}  # before the Arrow plan: a dict
    p = plan.make_plan(items, existing, shard_size, "bench")

    def walks(params: dict) -> float:
        t0 = time.perf_counter()
        collect_task_run_inputs_sync(params)
        resolve_inputs_sync(params)
        return round(time.perf_counter() - t0, 3)

    print(json.dumps({"images": n, "shard_size": shard_size,
                      "one_shard_task_s": walks({"shard": p.shards[0]}),
                      "commit_task_s": walks({"run": job.RunPlan(p, None, {})})}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--shard", type=int, default=10_000)
    p.add_argument("--baseline-repo")
    p.add_argument("--out")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.n, args.shard)
        return
    repos = {"clipvec": Path(__file__).resolve().parents[1]}
    if args.baseline_repo:
        repos["baseline"] = Path(args.baseline_repo).resolve()
    results = {}
    for name, repo in repos.items():
        r = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n),
                            "--shard", str(args.shard)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(repo)}, check=False)
        if r.returncode:
            raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
