"""The Lance dataset: schema, fragment writing, one commit per run, and its metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .errors import ClipvecError

if TYPE_CHECKING:
    import lance

    from .shard import Prepared

METADATA_KEY = b"clipvec"


def schema(dim: int, metadata: dict[str, Any] | None = None) -> pa.Schema:
    """The dataset's columns (README "Dataset schema"); ``metadata`` goes in the schema."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("mtime", pa.timestamp("us", tz="UTC")),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
        pa.field("run_id", pa.string()),
    ]
    meta = {METADATA_KEY: json.dumps(metadata).encode()} if metadata is not None else None
    return pa.schema(fields, metadata=meta)


def rows_to_batch(rows: Sequence[Prepared], vectors: np.ndarray, dim: int,
                  run_id: str) -> pa.RecordBatch:
    """Arrow rows for ``rows``; ``vectors`` holds the ok rows' embeddings in order."""
    n = len(rows)
    valid = np.fromiter((r.status == "ok" for r in rows), dtype=bool, count=n)
    ok = int(valid.sum())
    if ok == n:  # the usual batch: the vectors are the column as they are
        flat = np.ascontiguousarray(vectors[:n], dtype=np.float32)
    else:
        flat = np.zeros((n, dim), dtype=np.float32)
        flat[valid] = vectors[:ok]
    values = pa.array(flat.reshape(-1), type=pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~valid))
    cols = {
        "id": pa.array([r.item.id for r in rows], pa.string()),
        "uri": pa.array([r.item.uri for r in rows], pa.string()),
        "size": pa.array([r.item.size for r in rows], pa.int64()),
        "etag": pa.array([r.item.etag for r in rows], pa.string()),
        "mtime": pa.array([r.item.mtime for r in rows], pa.timestamp("us", tz="UTC")),
        "sha256": pa.array([r.sha256 for r in rows], pa.string()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "frames": pa.array([r.frames for r in rows], pa.int32()),
        "status": pa.array([r.status for r in rows], pa.string()),
        "error": pa.array([r.error for r in rows], pa.string()),
        "embedding": embedding,
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    return pa.RecordBatch.from_arrays(list(cols.values()), schema=schema(dim))


def import_lance() -> None:
    """Import Lance now rather than at the first read or write (it is imported lazily so that
    commands which never touch a dataset do not pay for it)."""
    import lance  # noqa: F401


def open_dataset(uri: str, storage_options: dict[str, Any] | None = None
                 ) -> lance.LanceDataset | None:
    """The dataset at ``uri``, or None when there is none yet."""
    import lance

    try:
        return lance.dataset(uri, storage_options=storage_options or None)
    except (ValueError, FileNotFoundError, OSError) as e:
        if "not found" in str(e).lower() or "does not exist" in str(e).lower() \
                or isinstance(e, FileNotFoundError):
            return None
        raise


def read_metadata(ds: lance.LanceDataset) -> dict[str, Any]:
    """The clipvec metadata recorded in the dataset's schema."""
    raw = (ds.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def check_compatible(ds: lance.LanceDataset, fingerprint: str, dim: int, uri: str) -> None:
    """Refuse to add rows made by another model configuration."""
    meta = read_metadata(ds)
    if not meta:
        raise ClipvecError(
            f"'{uri}' holds a Lance dataset that clipvec did not make. Choose another sink.uri."
        )
    if meta.get("model_fingerprint") != fingerprint:
        theirs = ", ".join(
            f"{m['name']} ({m['weights'].get('tag') or m['weights'].get('kind')})"
            for m in meta.get("model", {}).get("members", [])
        )
        raise ClipvecError(
            f"The dataset '{uri}' was made with another model configuration ({theirs}; "
            f"{meta.get('model', {}).get('dim')}-d) than this run's ({dim}-d, fingerprint "
            f"{fingerprint}); mixing them would make its vectors incomparable. Write to a new "
            "sink.uri, or rerun with the dataset's own model configuration."
        )


def fingerprints(ds: lance.LanceDataset) -> pa.Table:
    """id, size, etag, mtime of every row, for incremental runs (:func:`plan.make_plan`
    compares them with the listing column-wise)."""
    return ds.to_table(columns=["id", "size", "etag", "mtime"])


def write_fragments(batches: Iterable[pa.RecordBatch], uri: str, dim: int,
                    storage_options: dict[str, Any] | None = None) -> list[str]:
    """Write uncommitted data files under ``uri``; return their fragment metadata as JSON."""
    from lance.fragment import write_fragments as lance_write

    sch = schema(dim)
    reader = pa.RecordBatchReader.from_batches(sch, iter(batches))
    frags = lance_write(reader, uri, schema=sch, storage_options=storage_options or None,
                        max_rows_per_file=1 << 24)
    return [json.dumps(f.to_json()) for f in frags]


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def commit(uri: str, fragments: Sequence[str], dim: int, metadata: dict[str, Any],
           new_ids: Iterable[str] = (), replace_ids: Iterable[str] = (),
           base_version: int | None = None,
           storage_options: dict[str, Any] | None = None, message: str | None = None,
           ) -> lance.LanceDataset:
    """Make one new version holding ``fragments``, with one row per id.

    ``new_ids`` are the ids the fragments hold (an iterable read only when a concurrent
    run makes them needed: a run's ids can be millions). Rows of ``replace_ids``
    (changed inputs) are deleted in the same commit, as are rows that a
    concurrent run committed after ``base_version`` for any of ``new_ids``.
    Conflicting commits are retried.
    """
    import lance
    from lance.fragment import FragmentMetadata

    new = [FragmentMetadata.from_json(f) for f in fragments]
    replace = set(replace_ids)
    written_ids: set[str] | None = None

    def written() -> set[str]:
        nonlocal written_ids
        if written_ids is None:
            written_ids = set(new_ids)
        return written_ids

    for _ in range(10):
        ds = open_dataset(uri, storage_options)
        if ds is None:
            op = lance.LanceOperation.Overwrite(schema(dim, metadata), new)
            try:
                created = lance.LanceDataset.commit(uri, op, read_version=0,
                                                    storage_options=storage_options or None,
                                                    commit_message=message)
            except OSError as e:  # another run created it first: append instead
                if "exist" not in str(e).lower() and "conflict" not in str(e).lower():
                    raise
                continue
            if created.version == 1:
                return created
            # another run created the dataset first and this overwrite replaced it:
            # bring its rows back, less the ids this commit wrote
            return _restore_overwritten(created, written(), storage_options, message)
        doomed = set(replace)
        if ds.version != base_version:  # someone committed since we planned (or created it)
            doomed |= _ids_committed_since(ds, base_version) & written()
        removed, updated = _delete_rows(ds, doomed)
        if removed or updated:
            op = lance.LanceOperation.Update(removed_fragment_ids=removed,
                                             updated_fragments=updated, new_fragments=new)
        else:
            op = lance.LanceOperation.Append(new)
        try:
            return lance.LanceDataset.commit(uri, op, read_version=ds.version,
                                             storage_options=storage_options or None,
                                             commit_message=message)
        except OSError as e:
            if "conflict" not in str(e).lower() and "retry" not in str(e).lower():
                raise
            base_version = ds.version
    raise ClipvecError(f"Could not commit to '{uri}': too many concurrent writers.")


def _delete_rows(ds: lance.LanceDataset, ids: set[str]) -> tuple[list[int], list[Any]]:
    """Deletion of the rows of ``ids``, for an Update operation: (ids of fragments left
    empty, fragments with a new deletion file). One streamed scan of the id column finds
    the fragments that hold them; each of those is given only its own ids, so a commit
    costs one scan plus the ids, not fragments x ids (an incremental run over a dataset
    of thousands of shards' fragments, or a re-synced bucket's many changed files)."""
    import pyarrow.compute as pc

    if not ids:
        return [], []
    # large_string: a value set of over 2 GB of text is beyond plain strings' offsets
    wanted = pa.array(list(ids), pa.large_string())
    holders: dict[int, list[str]] = {}
    for group in _row_groups(ds.to_batches(columns=["id"], with_row_address=True,
                                           batch_size=1 << 16)):
        hit = group.filter(pc.is_in(group.column("id").cast(pa.large_string()),
                                    value_set=wanted))
        if hit.num_rows:
            fragments = pc.shift_right(hit.column("_rowaddr"), 32).to_pylist()
            for fragment, row_id in zip(fragments, hit.column("id").to_pylist(), strict=True):
                holders.setdefault(fragment, []).append(row_id)
    removed, updated = [], []
    for fragment_id, held in sorted(holders.items()):
        frag = ds.get_fragment(fragment_id)
        after = frag.delete("id IN (" + ",".join(_quote(i) for i in sorted(set(held))) + ")")
        if after is None:
            removed.append(fragment_id)
        elif after.deletion_file != frag.metadata.deletion_file:
            updated.append(after)
    return removed, updated


def _row_groups(batches: Iterable[pa.RecordBatch], rows: int = 1 << 22) -> Iterator[pa.Table]:
    """``batches`` gathered into tables of about ``rows`` rows: each set lookup builds its
    hash table of the wanted ids anew, so it is done per few million rows, not per batch
    (a dataset of many small fragments yields many small batches)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held)


def _restore_overwritten(ds: lance.LanceDataset, written: set[str],
                         storage_options: dict[str, Any] | None, message: str | None
                         ) -> lance.LanceDataset:
    """Re-add the rows of the version an overwrite replaced, less the ids it wrote.

    Only reached when two runs created the same dataset at once; the rows are
    copied into new fragments (a rare path, so simplicity beats speed here).
    """
    import lance
    from lance.fragment import write_fragments as lance_write

    prev = ds.checkout_version(ds.version - 1)
    pred = "id NOT IN (" + ",".join(_quote(i) for i in sorted(written)) + ")" if written else None
    reader = prev.scanner(filter=pred).to_reader()
    frags = lance_write(reader, ds.uri, schema=reader.schema,
                        storage_options=storage_options or None)
    if not frags:
        return ds
    return lance.LanceDataset.commit(ds.uri, lance.LanceOperation.Append(frags),
                                     read_version=ds.version,
                                     storage_options=storage_options or None,
                                     commit_message=message)


def _ids_committed_since(ds: lance.LanceDataset, version: int | None) -> set[str]:
    old = {f.fragment_id for f in ds.checkout_version(version).get_fragments()} \
        if version is not None else set()
    ids: set[str] = set()
    for frag in ds.get_fragments():
        if frag.fragment_id not in old:
            ids.update(frag.to_table(columns=["id"]).column("id").to_pylist())
    return ids
