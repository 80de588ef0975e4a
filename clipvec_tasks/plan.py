"""What a run must do: the source listing compared with the dataset, cut into shards.

The plan is frozen when a run starts; its id names the run's staging area, so
a killed run rerun over the same source and model resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .sources import SourceItem


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of fan-out, retry and resume."""

    index: int
    items: tuple[SourceItem, ...]


@dataclass(slots=True)
class Plan:
    listed: int
    shards: list[Shard]
    changed_ids: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    plan_id: str = ""

    @property
    def todo(self) -> int:
        return sum(len(s.items) for s in self.shards)

    def ids(self) -> Iterator[str]:
        """The ids the plan embeds (a generator: a plan can hold millions)."""
        return (i.id for s in self.shards for i in s.items)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(t: datetime) -> int:
    """Microseconds since the epoch (a naive time is taken as UTC, as Arrow takes it)."""
    return ((t if t.tzinfo else t.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND


def _same(item: SourceItem, known: tuple[Any, ...]) -> bool:
    size, etag, mtime = known  # mtime: microseconds since the epoch (dataset.fingerprints)
    if item.size != size:
        return False
    if item.etag or etag:
        return item.etag == etag
    if item.mtime is None or mtime is None:
        return item.mtime is None and mtime is None
    return abs(micros(item.mtime) - mtime) < 1000


def make_plan(items: Iterable[SourceItem], existing: Mapping[str, tuple[Any, ...]],
              shard_size: int, salt: str) -> Plan:
    """New and changed items, in listing order, in shards of ``shard_size``.

    ``existing`` maps id -> (size, etag, mtime in microseconds since the epoch) of rows
    already in the dataset (:func:`dataset.fingerprints`);
    ``salt`` (model fingerprint and dataset version) goes into the plan id.
    """
    h = hashlib.sha256(f"{salt}|{shard_size}".encode())
    todo: list[SourceItem] = []
    changed: list[str] = []
    seen: set[str] = set()
    listed = 0
    for item in items:
        listed += 1
        seen.add(item.id)
        known = existing.get(item.id)
        if known is not None and _same(item, known):
            continue
        if known is not None:
            changed.append(item.id)
        todo.append(item)
        h.update(f"{item.id}\0{item.size}\0{item.etag}\0{item.mtime}\n".encode())
    shards = [Shard(i, tuple(todo[s:s + shard_size]))
              for i, s in enumerate(range(0, len(todo), shard_size))]
    deleted = [i for i in existing if i not in seen]
    return Plan(listed, shards, changed, deleted, h.hexdigest()[:16])
