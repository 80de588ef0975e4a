"""The plan's comparison of a listing with the dataset's fingerprints."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from clipvec_tasks import dataset
from clipvec_tasks.plan import listing_table, make_plan, source_items
from clipvec_tasks.shard import Prepared
from clipvec_tasks.sources import SourceItem

T = datetime(2024, 5, 17, 8, 30, 12, 345678, tzinfo=UTC)


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


def _items(n: int, etag_of=lambda i: f"e{i}") -> list[SourceItem]:
    return [SourceItem(f"s3://b/{i:06d}.jpg", f"s3://b/{i:06d}.jpg", 100 + i, etag_of(i),
                       T + timedelta(seconds=i)) for i in range(n)]


def test_listing_table_round_trips_items():
    items = _items(3) + [SourceItem("tar://x.jpg::s3://b/t.tar", "s3://elsewhere/x.jpg", 5,
                                    None, None)]
    table = listing_table(iter(items))
    assert table.column("uri").null_count == 3  # a uri equal to its id is held once
    assert list(source_items(table)) == items


def test_plan_id_names_the_work_not_how_it_was_read():
    """The same listing gives the same plan id however it arrives (objects or a table,
    any chunking), and another one when any item's fingerprint differs."""
    items = _items(2000)
    a = make_plan(items, None, 300, "s")
    chunks = [listing_table(items[s:s + 700]) for s in range(0, 2000, 700)]
    b = make_plan(pa.concat_tables(chunks), None, 300, "s")
    assert a.plan_id == b.plan_id
    assert [len(s) for s in a.shards] == [300] * 6 + [200]
    assert list(a.ids()) == [i.id for i in items]
    assert [i for s in a.shards for i in s.iter_items()] == items  # streamed, 256 at a time
    touched = _items(2000, lambda i: "other" if i == 1234 else f"e{i}")
    assert make_plan(touched, None, 300, "s").plan_id != a.plan_id
    assert make_plan(items, None, 301, "s").plan_id != a.plan_id
    assert make_plan(items, None, 300, "t").plan_id != a.plan_id
    wide = listing_table(items)  # a listing with 64-bit string offsets hashes the same
    wide = pa.table([c.cast(pa.large_string()) if pa.types.is_string(c.type) else c
                     for c in wide.columns], names=wide.column_names)
    assert make_plan(wide, None, 300, "s").plan_id == a.plan_id


def test_changed_and_deleted_ids_in_listing_and_dataset_order():
    existing = listing_table(_items(10)).select(["id", "size", "etag", "mtime"])
    relisted = [i for i in _items(12, lambda i: "new" if i in (7, 3) else f"e{i}")
                if i.id not in ("s3://b/000005.jpg", "s3://b/000001.jpg")]
    plan = make_plan(relisted, existing, 4, "s")
    assert plan.changed_ids == ["s3://b/000003.jpg", "s3://b/000007.jpg"]
    assert plan.deleted_ids == ["s3://b/000001.jpg", "s3://b/000005.jpg"]
    assert [i.id for i in plan.shards[0].items] == [
        "s3://b/000003.jpg", "s3://b/000007.jpg", "s3://b/000010.jpg", "s3://b/000011.jpg"]


def test_a_shard_pickles_only_its_own_rows():
    """A shard goes to another process (Dask) alone: its pickle must not drag the whole
    listing's buffers along (a slice of an Arrow table would)."""
    plan = make_plan(_items(20_000), None, 100, "s")
    whole = len(pickle.dumps(listing_table(_items(20_000))))
    one = pickle.dumps(plan.shards[50])
    assert len(one) < whole / 50
    assert pickle.loads(one).items == _items(20_000)[5000:5100]


def test_an_empty_etag_in_the_dataset_is_no_etag():
    existing = listing_table(_items(2, lambda i: None)).select(["id", "size", "etag", "mtime"])
    existing = existing.set_column(2, "etag", pa.chunked_array([pa.array(["", ""])]))
    assert make_plan(_items(2, lambda i: None), existing, 4, "s").todo == 0


def test_an_id_the_dataset_holds_twice_is_not_deleted_while_listed():
    existing = listing_table(_items(3) + _items(3)[1:2]).select(["id", "size", "etag", "mtime"])
    plan = make_plan(_items(3)[:2], existing, 4, "s")
    assert plan.deleted_ids == ["s3://b/000002.jpg"]
    assert plan.todo == 0
