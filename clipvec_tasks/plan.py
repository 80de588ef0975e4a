"""What a run must do: the source listing compared with the dataset, cut into shards.

The plan is frozen when a run starts; its id names the run's staging area, so
a killed run rerun over the same source and model resumes where it stopped.

Listings and fingerprints are Arrow tables, compared column-wise: a listing of
millions of images costs about a third of the memory (and a fraction of the time)
that one Python object per image did. Each shard holds its own compact copy of its
rows, so a shard sent to another process (Dask) carries only itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .sources import SourceItem, listing_table, null_if_empty, source_items


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of fan-out, retry and resume: its rows of the listing (LISTING schema)."""

    index: int
    rows: pa.Table

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def items(self) -> list[SourceItem]:
        return list(source_items(self.rows))

    def iter_items(self) -> Iterator[SourceItem]:
        """The items a few hundred at a time, as a pipeline takes them: the first are
        read while the rest are still being made."""
        return source_items(self.rows, 256)


@dataclass(slots=True)
class Plan:
    listed: int
    shards: list[Shard]
    changed_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    plan_id: str = ""

    @property
    def todo(self) -> int:
        return sum(len(s) for s in self.shards)

    def ids(self) -> Iterator[str]:
        """The ids the plan embeds (a generator: a plan can hold millions)."""
        for s in self.shards:
            yield from s.rows.column("id").to_pylist()


def _unchanged(listing: pa.Table, known: pa.Array, existing: pa.Table) -> pa.Array:
    """Per listed row: it is in the dataset (``known``: its row there) with the same
    fingerprint. Same size, and then the same etag where either side has one, else the
    same mtime within a millisecond (or none on both sides)."""
    old = existing.select(["size", "etag", "mtime"]).take(known)
    size_eq = pc.equal(listing.column("size"), old.column("size"))
    etag_l = null_if_empty(listing.column("etag"))
    etag_o = null_if_empty(old.column("etag"))
    has_etag = pc.or_(pc.is_valid(etag_l), pc.is_valid(etag_o))
    etag_eq = pc.fill_null(pc.equal(etag_l, etag_o), False)
    t_l = pc.cast(listing.column("mtime"), pa.int64())
    t_o = pc.cast(old.column("mtime"), pa.int64())
    close = pc.fill_null(pc.less(pc.abs(pc.subtract(t_l, t_o)), 1000), False)
    no_times = pc.and_(pc.is_null(t_l), pc.is_null(t_o))
    same = pc.if_else(has_etag, etag_eq, pc.or_(close, no_times))
    return pc.fill_null(pc.and_(size_eq, same), False)


def _unlisted(listed: pa.ChunkedArray, known: pa.ChunkedArray,
              ids: pa.ChunkedArray) -> list[str]:
    """The dataset's ``ids`` that the listing no longer holds. ``known`` (each listed
    row's index in ``ids``) marks most; the few left are checked against the listing
    (a row whose id the dataset holds twice is not the first's index). Both id columns
    come as large strings (:func:`_large`)."""
    marked = np.zeros(len(ids), dtype=bool)
    marked[pc.drop_null(known).to_numpy()] = True
    candidates = pc.filter(ids, pa.array(~marked))
    if len(candidates) == 0:
        return []
    relisted = pc.filter(listed, pc.is_in(listed, value_set=candidates))
    return pc.filter(candidates, pc.invert(pc.is_in(candidates, value_set=relisted))).to_pylist()


def _large(ids: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``ids`` with 64-bit offsets (no copy of the characters): Arrow's set lookups
    gather their value set into one array, which plain strings cap at 2 GB of text (about
    40 million ids of 50 characters)."""
    return ids.cast(pa.large_string())


def _digest(h: Any, rows: pa.Table) -> None:
    """Feed every row's fingerprint into ``h``, column-wise (the plan id's input)."""
    text = pa.large_string()  # one string type for all, whatever the listing's
    for batch in rows.to_batches():
        fields = [batch.column("id"), batch.column("uri"), batch.column("size"),
                  batch.column("etag"), pc.cast(batch.column("mtime"), pa.int64())]
        line = pc.binary_join_element_wise(
            *(pc.cast(f, text) for f in fields), pa.scalar("", text), pa.scalar("\0", text),
            null_handling="replace", null_replacement="")
        h.update(_string_bytes(line))


def _string_bytes(arr: pa.Array) -> bytes | memoryview:
    """The characters of a large_string array's values, concatenated (no copy)."""
    offsets, data = arr.buffers()[1], arr.buffers()[2]
    if data is None or len(arr) == 0:
        return b""
    ends = np.frombuffer(offsets, np.int64)
    return memoryview(data)[ends[arr.offset]:ends[arr.offset + len(arr)]]


def _compact(rows: pa.Table) -> pa.Table:
    """A copy of ``rows`` that owns its buffers: a slice pickles its parent's whole
    buffers. (Taken from the slice, not the parent: a take on a many-chunk table joins
    all its chunks first.)"""
    return rows.take(np.arange(rows.num_rows))


def make_plan(items: Iterable[SourceItem] | pa.Table, existing: pa.Table | None,
              shard_size: int, salt: str) -> Plan:
    """New and changed items, in listing order, in shards of ``shard_size``.

    ``items`` is the listing (a LISTING table, or SourceItems); ``existing`` the rows
    already in the dataset, ``id``, ``size``, ``etag``, ``mtime``
    (:func:`dataset.fingerprints`), or None; ``salt`` (model fingerprint and dataset
    version) goes into the plan id.
    """
    listing = items if isinstance(items, pa.Table) else listing_table(items)
    changed: list[str] = []
    deleted: list[str] = []
    if existing is None or existing.num_rows == 0:
        todo = listing
    else:
        listed, ids = _large(listing.column("id")), _large(existing.column("id"))
        known = pc.index_in(listed, value_set=ids)
        keep = pc.invert(_unchanged(listing, known, existing))
        todo = listing.filter(keep)
        changed = listing.filter(pc.and_(pc.is_valid(known), keep)).column("id").to_pylist()
        deleted = _unlisted(listed, known, ids)
    h = hashlib.sha256(f"{salt}|{shard_size}".encode())
    _digest(h, todo)
    shards = [Shard(i, _compact(todo.slice(s, shard_size)))
              for i, s in enumerate(range(0, todo.num_rows, shard_size))]
    return Plan(listing.num_rows, shards, changed, deleted, h.hexdigest()[:16])
