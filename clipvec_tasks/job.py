"""The steps of one vectorize run as plain functions; ``flows/`` wires them into Prefect.

list -> fetch weights -> plan (diff with the dataset) -> embed shards (fan-out)
-> commit once -> summary. Nothing here knows Prefect or Hydra.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import dataset, staging
from .decode import DEFAULT_MAX_PIXELS, DecodePolicy
from .embedder import Embedder, model_fingerprint
from .errors import ClipvecError
from .members import MemberConfig, WeightsConfig, load_member, resolve_weights
from .plan import Plan, Shard, make_plan
from .progress import Progress
from .registry import get_spec
from .runtime import resolve_batch_size, resolve_device, resolve_precision, resolve_shard_size
from .shard import embed_items
from .sources import list_images, list_table, read_bytes
from .weights import DEFAULT_CACHE_DIR, parse_pretrained

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class JobConfig:
    """Everything a run needs, as plain values (built from the Hydra config)."""

    source_uri: str
    sink_uri: str
    members: tuple[MemberConfig, ...]
    shard_size: int | None = None  # None: auto (runtime.resolve_shard_size)
    source_options: dict[str, Any] = field(default_factory=dict)
    sink_options: dict[str, Any] = field(default_factory=dict)
    weights: WeightsConfig = WeightsConfig()
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: auto (runtime.resolve_batch_size)
    decode_workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    on_deleted: str = "keep"  # rows of inputs gone from the source: keep or delete
    preprocess: str = "auto"  # auto (tensor on GPU, pil on CPU), pil, tensor
    compile: bool = False  # torch.compile each member's tower
    read_processes: int | None = None  # GPU path: reader processes (None: auto)
    # GPU path: share of JPEGs the readers decode and resize; None: auto (steered)
    cpu_decode_share: float | None = 0.0
    jpeg_draft: bool = False  # CPU decodes: large JPEGs decoded at a reduced scale

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> JobConfig:
        """From the composed config (``source``, ``sink``, ``model``, ``runtime``, ``weights``)."""
        src, sink, rt = cfg["source"], cfg["sink"], cfg.get("runtime", {})
        w = cfg.get("weights", {}) or {}
        members = tuple(
            MemberConfig(str(m["name"]), None if m.get("pretrained") is None
                         else str(m["pretrained"]), bool(m.get("normalize", True)),
                         int(m.get("seed", 0)))
            for m in cfg["model"]["members"]
        )
        if not members:
            raise ClipvecError("model.members is empty: name at least one model, e.g. "
                               "model=open_clip_vit_b32.")
        shard_size = _auto_int("source.shard_size", src.get("shard_size"))
        batch_size = _auto_int("runtime.batch_size", rt.get("batch_size"))
        return cls(
            source_uri=str(src["uri"]),
            sink_uri=_sink_uri(str(sink["uri"])),
            members=members,
            shard_size=shard_size,
            source_options=dict(src.get("storage_options") or {}),
            sink_options=dict(sink.get("storage_options") or {}),
            weights=WeightsConfig(
                cache_dir=os.path.expanduser(str(w.get("cache_dir") or DEFAULT_CACHE_DIR)),
                mirror=w.get("mirror"),
                storage_options=tuple(sorted((w.get("storage_options") or {}).items())),
            ),
            device=str(rt.get("device", "auto")),
            precision=str(rt.get("precision", "auto")),
            batch_size=batch_size,
            decode_workers=rt.get("decode_workers"),
            max_pixels=int(rt.get("max_pixels") or DEFAULT_MAX_PIXELS),
            on_deleted=_on_deleted(sink.get("on_deleted", "keep")),
            preprocess=_choice("runtime.preprocess", rt.get("preprocess", "auto"),
                               ("auto", "pil", "tensor")),
            compile=bool(rt.get("compile", False)),
            read_processes=None if rt.get("read_processes") is None
            else int(rt["read_processes"]),
            cpu_decode_share=_share(rt.get("cpu_decode_share")),
            jpeg_draft=_flag("runtime.jpeg_draft", rt.get("jpeg_draft", False)),
        )


def _auto_int(key: str, value: object) -> int | None:
    """A positive count, or None for ``auto`` (chosen by device when the run starts)."""
    if value is None or value == "auto":
        return None
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ClipvecError(f"{key} must be auto or a whole number of at least 1, not '{value}'.")
    return n


def _share(value: object) -> float | None:
    if value == "auto":
        return None
    try:
        share = float(value or 0.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ClipvecError(f"runtime.cpu_decode_share must be auto or between 0 and 1, "
                           f"not '{value}'.")
    return share


def _flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ClipvecError(f"{key} must be true or false, not '{value}'.")


def _on_deleted(value: object) -> str:
    return _choice("sink.on_deleted", value, ("keep", "delete"))


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ClipvecError(f"{key} must be one of {', '.join(allowed)}, not '{value}'.")
    return str(value)


def _sink_uri(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


# ---- listing and weights -------------------------------------------------------------

def list_source(job: JobConfig) -> pa.Table:
    """The frozen listing of the source (a :data:`sources.LISTING` table); an error when it
    holds no images."""
    items = list_table(job.source_uri, job.source_options)
    if not items.num_rows:
        raise ClipvecError(
            f"The source '{job.source_uri}' holds no images (looked for files named *.jpg, "
            "*.png, *.webp, *.gif, *.tif, ... in all subfolders). Check source.uri."
        )
    return items


def fetch_weights(job: JobConfig) -> dict[str, Any]:
    """Make every member's weights local (once, before the fan-out); describe the model.

    Returns the model description the dataset records, without preprocessing
    details (those come from the loaded members).
    """
    members, offset = [], 0
    for m in job.members:
        spec = get_spec(m.name)
        ref = parse_pretrained(m.pretrained, spec.weights, m.seed)
        resolved = resolve_weights(spec, ref, job.weights)
        members.append({**spec.describe(), "weights": resolved.describe(), "offset": offset,
                        "normalize": m.normalize})
        offset += spec.dim
    description = {"dim": offset, "members": members}
    return {"model": description, "model_fingerprint": model_fingerprint(description)}


# ---- planning ------------------------------------------------------------------------

@dataclass
class RunPlan:
    plan: Plan
    base_version: int | None
    done: dict[int, dict[str, Any]]  # shards a killed try already finished

    @property
    def pending(self) -> list[Shard]:
        return [s for s in self.plan.shards if s.index not in self.done]


def plan_run(job: JobConfig, items: pa.Table, model: dict[str, Any]) -> RunPlan:
    """Compare the listing (:func:`list_source`) with the dataset; refuse a dataset of
    another model."""
    ds = dataset.open_dataset(job.sink_uri, job.sink_options)
    existing = None
    base = None
    if ds is not None:
        dataset.check_compatible(ds, model["model_fingerprint"], model["model"]["dim"],
                                 job.sink_uri)
        existing = dataset.fingerprints(ds)
        base = ds.version
    shard_size = resolve_shard_size(job.shard_size, resolve_device(job.device))
    plan = make_plan(items, existing, shard_size, f"{model['model_fingerprint']}|{base}")
    done = staging.read_markers(job.sink_uri, plan.plan_id, job.sink_options) if plan.shards \
        else {}
    return RunPlan(plan, base, done)


# ---- the shard task ------------------------------------------------------------------

_EMBEDDERS: dict[Any, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(job: JobConfig) -> Embedder:
    """This process's embedder for ``job``'s model: loaded once, reused by every shard."""
    device = resolve_device(job.device)
    precision = resolve_precision(job.precision, device)
    key = (job.members, str(device), precision, job.weights, job.compile)
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            if device.type == "cpu":
                import torch

                torch.set_num_threads(os.cpu_count() or 1)
            _EMBEDDERS[key] = Embedder(
                [load_member(m, device, precision, job.weights, job.compile)
                 for m in job.members])
        return _EMBEDDERS[key]


def warm_up(job: JobConfig) -> None:
    """Load what a run's first shard needs before it starts (the flow does this while
    Prefect's local API boots): the model, then the dataset library (Lance's first import
    takes a few tenths of a second)."""
    get_embedder(job)
    dataset.import_lance()


def _read_processes(job: JobConfig) -> int:
    """Reader processes for the GPU path: on machines with cores to spare, unless set."""
    if job.read_processes is not None:
        return job.read_processes
    cores = os.cpu_count() or 1
    return min(8, cores // 2) if cores >= 8 else 0


def _reader(options: dict[str, Any]):
    """``read_bytes`` bound to the source's options (a partial: it pickles to reader processes)."""
    return functools.partial(read_bytes, storage_options=options)


def run_shard(job: JobConfig, shard: Shard, plan_id: str, run_id: str,
              progress: Progress | None = None) -> dict[str, Any]:
    """Embed one shard into uncommitted fragments; mark it done; return its counts."""
    t0 = time.perf_counter()
    embedder = get_embedder(job)
    t_ready = time.perf_counter()
    statuses: Counter[str] = Counter()

    def counted(batches):
        for b in batches:
            statuses.update(b.column("status").to_pylist())
            yield b

    # reads from a bucket wait on the network, not the CPU: many threads hide the latency
    remote = "://" in job.source_uri and not job.source_uri.startswith("file://")
    workers = job.decode_workers or (32 if remote else None)
    paths: dict[str, int] = {}  # tensor path: where the ok images were decoded
    batches = embed_items(shard.iter_items(), embedder, _reader(job.source_options), run_id,
                          resolve_batch_size(job.batch_size, embedder.device), workers,
                          DecodePolicy(max_pixels=job.max_pixels,
                                       draft=embedder.draft_size if job.jpeg_draft else 0),
                          progress.update if progress else None, job.preprocess,
                          _read_processes(job), job.cpu_decode_share, paths)
    fragments = dataset.write_fragments(counted(batches), job.sink_uri, embedder.dim,
                                        job.sink_options)
    result = {"shard": shard.index, "fragments": fragments, "statuses": dict(statuses),
              "rows": sum(statuses.values()), "seconds": time.perf_counter() - t0,
              "embed_seconds": time.perf_counter() - t_ready,
              "model": embedder.describe(), "decode_paths": paths}
    staging.write_marker(job.sink_uri, plan_id, shard.index, result, job.sink_options)
    return result


# ---- commit and summary ----------------------------------------------------------------

def commit_run(job: JobConfig, run: RunPlan, results: list[dict[str, Any]],
               model: dict[str, Any], run_id: str, extra_meta: dict[str, Any]) -> int:
    """One commit for the whole run; returns the new version."""
    fragments = [f for r in results for f in r["fragments"]]
    described = results[0]["model"] if results else model["model"]
    replace = list(run.plan.changed_ids)
    if job.on_deleted == "delete":
        replace += run.plan.deleted_ids
    metadata = {"model": described, "model_fingerprint": model["model_fingerprint"],
                "source": {"uri": job.source_uri}, **extra_meta}
    ds = dataset.commit(job.sink_uri, fragments, described["dim"], metadata,
                        new_ids=run.plan.ids(), replace_ids=replace,
                        base_version=run.base_version, storage_options=job.sink_options,
                        message=f"clipvec run {run_id}")
    if run.plan.shards:
        staging.clear(job.sink_uri, run.plan.plan_id, job.sink_options)
    return ds.version


def summarize(run: RunPlan | None, results: list[dict[str, Any]], listed: int, dim: int,
              version: int | None, seconds: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    embedded = sum(statuses.values())
    embed_seconds = sum(r.get("embed_seconds", 0.0) for r in results)
    return {
        "listed": listed,
        "new_or_changed": run.plan.todo if run else 0,
        "deleted_in_source": len(run.plan.deleted_ids) if run else 0,
        "embedded": embedded,
        "ok": statuses.get("ok", 0),
        "failed": {k: v for k, v in sorted(statuses.items()) if k != "ok"},
        "resumed_shards": len(run.done) if run else 0,
        "dim": dim,
        "version": version,
        "seconds": round(seconds, 2),
        "images_per_second": round(embedded / seconds, 1) if seconds > 0 else None,
        # per worker, model loading excluded
        "steady_images_per_second": round(embedded / embed_seconds, 1) if embed_seconds else None,
    }


def format_summary(s: dict[str, Any], sink: str) -> str:
    failed = ", ".join(f"{k} {v}" for k, v in s["failed"].items()) or "none"
    lines = [
        f"clipvec: {s['listed']} images listed, {s['new_or_changed']} new or changed, "
        f"{s['embedded']} embedded ({s['ok']} ok; failed: {failed})",
        f"  dataset {sink} -> version {s['version']}, dim {s['dim']}" if s["version"] is not None
        else f"  dataset {sink} unchanged: nothing new to commit",
        f"  {s['seconds']} s in the flow, {s['images_per_second'] or 0} img/s"
        + (f" (embedding: steady {s['steady_images_per_second']} img/s)"
           if s["steady_images_per_second"] else ""),
    ]
    if s["resumed_shards"]:
        lines.insert(1, f"  resumed {s['resumed_shards']} shard(s) finished by an earlier try")
    return "\n".join(lines)


def preflight(job: JobConfig) -> None:
    """Cheap checks before any orchestration starts: model names, device, source exists."""
    for m in job.members:
        get_spec(m.name)
    device = resolve_device(job.device)
    resolve_precision(job.precision, device)
    if next(iter(list_images(job.source_uri, job.source_options)), None) is None:
        list_source(job)  # raises the "holds no images" error
