"""Per-shard done-markers beside the dataset: how a killed run resumes.

A shard's marker (its uncommitted fragments and counts) is written after its
data files, so a marker's presence means the shard is durable. The run's one
commit makes the rows visible; its staging folder is removed after.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

STAGING_DIR = "_clipvec_staging"


def _root(sink: str, plan_id: str, storage_options: dict[str, Any] | None):
    fs, path = fsspec.core.url_to_fs(sink, **(storage_options or {}))
    return fs, f"{path.rstrip('/')}/{STAGING_DIR}/{plan_id}"


def write_marker(sink: str, plan_id: str, shard: int, result: dict[str, Any],
                 storage_options: dict[str, Any] | None = None) -> None:
    fs, root = _root(sink, plan_id, storage_options)
    fs.makedirs(root, exist_ok=True)
    tmp, final = f"{root}/.shard-{shard:06d}.json.tmp", f"{root}/shard-{shard:06d}.json"
    with fs.open(tmp, "w") as f:
        json.dump(result, f)
    fs.mv(tmp, final)


def read_markers(sink: str, plan_id: str, storage_options: dict[str, Any] | None = None
                 ) -> dict[int, dict[str, Any]]:
    """shard index -> its result, for the shards a previous try finished."""
    fs, root = _root(sink, plan_id, storage_options)
    fs.invalidate_cache(root)  # a long-lived process (a served deployment) may have listed it
    if not fs.exists(root):
        return {}
    paths = fs.glob(f"{root}/shard-*.json")
    fs.invalidate_cache(root)
    # one call for all: bucket filesystems fetch them concurrently (a run of thousands of
    # shards resumes in seconds, not a request after another)
    blobs = fs.cat(paths) if paths else {}
    return {int(path.rsplit("-", 1)[1].split(".")[0]): json.loads(blobs[path])
            for path in paths}


def clear(sink: str, plan_id: str | None = None,
          storage_options: dict[str, Any] | None = None) -> None:
    """Remove one plan's staging folder (or all of them)."""
    fs, root = _root(sink, plan_id or "", storage_options)
    root = root.rstrip("/")
    if fs.exists(root):
        fs.rm(root, recursive=True)
    parent = root.rsplit("/", 1)[0] if plan_id else None
    if parent and fs.exists(parent) and not fs.ls(parent):
        fs.rm(parent, recursive=True)
