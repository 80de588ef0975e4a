"""clipvec's main job: a Prefect flow behind a Hydra command line.

    python flows/vectorize.py source.uri=photos/ sink.uri=photos.lance model=open_clip_vit_b32

Plans shards from a frozen listing, fans one task out per shard (decode, embed
in batches, write Lance fragments), commits once, and prints a summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from typing import Any

if __package__ in (None, ""):  # run as a script: make `flows` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flows import local_api  # noqa: E402 - light: no torch, no Prefect

_INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "--resolve"}
if __name__ == "__main__" and not _INFO_FLAGS & set(sys.argv[1:]):
    local_api.start_early()  # boot Prefect's local API while torch and the model load

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from clipvec_tasks import job as J
from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.progress import Progress
from clipvec_tasks.retry import is_transient

_progress: Progress | None = None  # the terminal bar, shared by this process's shard tasks
# storage options given on the command line stay out of Prefect parameters (they may hold
# credentials): run() keeps them here and the flow merges them back in this process
_private_options: dict[str, dict[str, Any]] = {}
_OPTION_GROUPS = ("source", "sink", "weights")


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def _shard_name() -> str:
    from prefect.runtime import task_run

    shard = task_run.parameters.get("shard")
    return f"embed-shard-{shard.index:05d}" if shard is not None else "embed-shard"


@task(name="list-source", cache_policy=NO_CACHE)
def list_source(job: J.JobConfig) -> Any:
    return J.list_source(job)


@task(name="fetch-weights", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=_retry_transient)
def fetch_weights(job: J.JobConfig) -> dict[str, Any] | str:
    """Weights fetched once before the fan-out; a user error comes back as its message."""
    try:
        return J.fetch_weights(job)
    except ClipvecError as e:
        return str(e)


@task(name="plan", cache_policy=NO_CACHE)
def plan(job: J.JobConfig, items: Any, model: dict[str, Any]) -> J.RunPlan | str:
    try:
        return J.plan_run(job, items, model)
    except ClipvecError as e:
        return str(e)


# the task is the domain function itself, so Dask workers import it by reference
embed_shard = task(J.run_shard, name="embed-shard", task_run_name=_shard_name,
                   cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30],
                   retry_condition_fn=_retry_transient)


@task(name="commit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=_retry_transient)
def commit(job: J.JobConfig, run: J.RunPlan, results: list, model: dict, run_id: str) -> int:
    return J.commit_run(job, run, results, model, run_id, _versions())


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("clipvec", "torch", "torchvision", "open_clip_torch", "openai-clip", "pylance",
                 "pillow", "prefect"):
        with contextlib.suppress(PackageNotFoundError):
            libs[name] = version(name)
    return {"clipvec_version": libs.pop("clipvec", None), "libraries": libs}


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())


@flow(name="vectorize", log_prints=False)
def vectorize(config: dict[str, Any]) -> dict[str, Any]:
    """Embed every new or changed image of ``config['source']`` into ``config['sink']``."""
    t0 = time.perf_counter()
    logger = get_run_logger()
    try:
        job = J.JobConfig.from_dict(_with_private_options(config))
    except ClipvecError as e:
        return Failed(message=str(e))
    run_id = _run_id()
    try:
        items = list_source(job)
    except ClipvecError as e:
        return Failed(message=str(e))
    model = fetch_weights(job)
    if isinstance(model, str):
        return Failed(message=model)
    run = plan(job, items, model)
    del items  # the plan's shards hold what is left to do; the listing can go
    if isinstance(run, str):
        return Failed(message=run)
    logger.info("%d images listed, %d new or changed, %d shard(s) to embed (%d resumed)",
                run.plan.listed, run.plan.todo, len(run.pending), len(run.done))
    results: list[dict[str, Any]] = list(run.done.values())
    version = None
    if run.pending:
        results += _embed_all(job, run, run_id)
    results.sort(key=lambda r: r["shard"])
    if run.plan.shards or (job.on_deleted == "delete" and run.plan.deleted_ids):
        version = commit(job, run, results, model, run_id)
    summary = J.summarize(run, results, run.plan.listed, model["model"]["dim"], version,
                          time.perf_counter() - t0)
    summary["sink"] = job.sink_uri
    _artifact(summary, job.sink_uri)
    logger.info("summary: %s", {k: v for k, v in summary.items() if k != "sink"})
    return summary


def _embed_all(job: J.JobConfig, run: J.RunPlan, run_id: str) -> list[dict[str, Any]]:
    """Fan out one task per pending shard; a progress bar here, a progress artifact in the UI."""
    global _progress
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    total = len(run.pending)
    artifact = create_progress_artifact(0.0, key="clipvec-progress",
                                        description="shards embedded")
    _progress = Progress(sum(len(s) for s in run.pending))
    results = []
    try:
        in_process = isinstance(_runner_of_this_run(), ThreadPoolTaskRunner)
        futures = embed_shard.map(job=unmapped(job), shard=run.pending,
                                  plan_id=unmapped(run.plan.plan_id), run_id=unmapped(run_id),
                                  progress=unmapped(_progress if in_process else None))
        for future in as_completed(list(futures)):
            results.append(future.result())
            update_progress_artifact(artifact, 100.0 * len(results) / total)
    finally:
        _progress.close()
        _progress = None
    return results


def _runner_of_this_run() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.task_runner if ctx else None


def _with_private_options(config: dict[str, Any]) -> dict[str, Any]:
    merged = dict(config)
    for group, options in _private_options.items():
        merged[group] = {**merged.get(group, {}), "storage_options": options}
    return merged


def _public(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without storage options (kept in-process, never a Prefect parameter)."""
    _private_options.clear()
    public = dict(config)
    for group in _OPTION_GROUPS:
        section = dict(public.get(group) or {})
        options = section.pop("storage_options", None)
        if options:
            _private_options[group] = dict(options)
        public[group] = section
    return public


def _artifact(summary: dict[str, Any], sink: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    create_markdown_artifact(f"## clipvec run\n\nsink: `{sink}`\n\n| | |\n|---|---|\n{rows}\n",
                             key="clipvec-run-summary", description="clipvec run summary")


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the flow on ``config``; a user error raises ClipvecError with its paragraph."""
    job = J.JobConfig.from_dict(config)
    J.preflight(job)
    runner = _task_runner(config.get("runtime", {}))
    note = local_api.starting_note()
    if note and sys.stderr.isatty():  # the seconds before the first log line, explained
        models = ", ".join(m.name for m in job.members)
        print(f"clipvec: loading {models}; {note}...", file=sys.stderr, flush=True)
    if isinstance(runner, ThreadPoolTaskRunner):
        # load the model while Prefect's local API starts: both take seconds; the shard
        # tasks of this process take the loaded model from the cache, and a model that
        # cannot be loaded is reported here, as one paragraph, before any task runs
        errors: list[BaseException] = []
        loader = threading.Thread(target=_prewarm, args=(job, errors), name="clipvec-prewarm",
                                  daemon=True)
        loader.start()
        local_api.wait()
        loader.join()
        if errors:
            raise errors[0]
    local_api.wait()
    state = vectorize.with_options(task_runner=runner)(_public(config), return_state=True)
    if state.is_failed():
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, BaseException):
            raise exc  # not a user error the flow reported: keep its traceback
        raise ClipvecError(state.message or "the run failed")
    return state.result()


def _prewarm(job: J.JobConfig, errors: list[BaseException]) -> None:
    try:
        J.warm_up(job)
    except BaseException as e:  # handed to the caller's thread
        errors.append(e)


def _task_runner(runtime: dict[str, Any]) -> Any:
    """Threads in this process (default), or a Dask cluster: one worker per GPU on this
    machine (dask_cuda), N CPU worker processes, or an existing scheduler's workers."""
    kind = runtime.get("task_runner", "threads")
    workers = int(runtime.get("workers") or 1)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise ClipvecError(f"runtime.task_runner must be threads or dask, not '{kind}'.")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ClipvecError("runtime.task_runner=dask needs prefect-dask: "
                           "pip install -e '.[dask]'.") from None
    if runtime.get("dask_address"):
        return DaskTaskRunner(address=runtime["dask_address"])
    import torch

    if str(runtime.get("device", "auto")) in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        try:
            import dask_cuda  # noqa: F401
        except ImportError:
            raise ClipvecError("runtime.task_runner=dask on GPUs needs dask-cuda: "
                               "pip install dask-cuda (one worker per GPU).") from None
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster")
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def main(argv: list[str] | None = None) -> None:
    """The Hydra command line around :func:`run`."""
    import hydra

    from flows.hydra_config import CONF_DIR, expand_overrides, register, to_job_dict

    register()
    try:
        sys.argv[1:] = expand_overrides(sys.argv[1:] if argv is None else argv)
    except ClipvecError as e:
        _die(e)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _hydra_main(cfg: Any) -> None:
        try:
            summary = run(to_job_dict(cfg))
        except ClipvecError as e:
            _die(e)
        print(J.format_summary(summary, summary["sink"]), flush=True)  # the last word

    _hydra_main()


def _die(e: ClipvecError) -> None:
    print(f"clipvec: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
    from clipvec_tasks.runtime import freeze_heap_before_exit

    freeze_heap_before_exit()
