"""A scheduled deployment of clipvec whose parameters are Hydra overrides.

Serve it from this machine (a long-running process that runs the schedule):

    python deployments/vectorize_deployment.py --cron "0 2 * * *" -- \\
        source.uri=s3://bucket/photos sink.uri=s3://bucket/photos.lance model=open_clip_vit_b32

or register it with a work pool through ``prefect deploy`` (see prefect.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prefect import flow

from flows.hydra_config import compose
from flows.vectorize import run

DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00


@flow(name="vectorize-scheduled", log_prints=True)
def vectorize_overrides(overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose the config from Hydra ``overrides`` (as on the command line) and run the job.

    Keep credentials out of ``overrides`` (they are Prefect parameters): use the
    worker's AWS_*/GOOGLE_*/AZURE_* variables.
    """
    return run(compose(list(overrides or [])))


def build(overrides: list[str], name: str = "clipvec-nightly", cron: str = DEFAULT_CRON,
          timezone: str = "UTC"):
    """The deployment object (offline: nothing is sent to an API until it is applied/served)."""
    from prefect.schedules import Cron

    return vectorize_overrides.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters={"overrides": list(overrides)},
        description="Embed new and changed images into the Lance dataset (clipvec).",
        tags=["clipvec"],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve clipvec on a cron schedule.")
    p.add_argument("--name", default="clipvec-nightly")
    p.add_argument("--cron", default=DEFAULT_CRON)
    p.add_argument("--timezone", default="UTC")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for flows/vectorize.py")
    args = p.parse_args(argv)
    from prefect import serve

    serve(build(args.overrides, args.name, args.cron, args.timezone))


if __name__ == "__main__":
    main()
