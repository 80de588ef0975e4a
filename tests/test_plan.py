"""The plan's comparison of a listing with the dataset's fingerprints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from clipvec_tasks import dataset
from clipvec_tasks.plan import make_plan, micros
from clipvec_tasks.shard import Prepared
from clipvec_tasks.sources import SourceItem

T = datetime(2024, 5, 17, 8, 30, 12, 345678, tzinfo=UTC)


def test_micros_is_exact_and_takes_naive_times_as_utc():
    assert micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert micros(T) == 1715934612345678
    assert micros(T.replace(tzinfo=None)) == micros(T)
    assert micros(T.astimezone(ZoneInfo("Asia/Tokyo"))) == micros(T)


def test_fingerprints_read_back_from_the_dataset_match_their_listing(tmp_path):
    """Rows written from a listing compare equal to that listing on the next run: mtime
    (no etag: local files) within a millisecond, etag exactly, size exactly."""
    dim, uri = 4, str(tmp_path / "d.lance")
    listed = [SourceItem("a", "a", 10, None, T), SourceItem("b", "b", 20, "e1", None),
              SourceItem("c", "c", 30, None, None)]
    rows = [Prepared(i, "ok") for i in listed]
    batch = dataset.rows_to_batch(rows, np.ones((3, dim), np.float32), dim, "r")
    dataset.commit(uri, dataset.write_fragments([batch], uri, dim), dim, {"x": 1},
                   new_ids={"a", "b", "c"})
    existing = dataset.fingerprints(dataset.open_dataset(uri))
    assert make_plan(listed, existing, 10, "s").todo == 0
    relisted = [SourceItem("a", "a", 10, None, T + timedelta(microseconds=900)),
                SourceItem("b", "b", 20, "e2", None),  # new etag: changed
                SourceItem("c", "c", 30, None, T),  # an mtime where there was none
                SourceItem("d", "d", 40, None, T)]  # new
    plan = make_plan(relisted, existing, 10, "s")
    assert sorted(plan.changed_ids) == ["b", "c"]
    assert sorted(i.id for s in plan.shards for i in s.items) == ["b", "c", "d"]
    later = [SourceItem("a", "a", 10, None, T + timedelta(milliseconds=2))]
    assert make_plan(later, existing, 10, "s").changed_ids == ["a"]
