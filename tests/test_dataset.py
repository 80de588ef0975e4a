"""Lance commits: one version per commit, one row per id whatever the interleaving."""

from __future__ import annotations

import numpy as np
import pytest

from clipvec_tasks import dataset
from clipvec_tasks.shard import Prepared
from clipvec_tasks.sources import SourceItem

DIM = 4
META = {"model": {"dim": DIM, "members": []}, "model_fingerprint": "f"}


def _frags(uri, ids, run="r", value=1.0):
    rows = [Prepared(SourceItem(i, i, 1, None, None), "ok") for i in ids]
    vecs = np.full((len(ids), DIM), value, dtype=np.float32)
    return dataset.write_fragments([dataset.rows_to_batch(rows, vecs, DIM, run)], uri, DIM)


def _ids(uri):
    return sorted(dataset.open_dataset(uri).to_table(columns=["id"])["id"].to_pylist())


def test_schema_has_the_contract_columns():
    names = dataset.schema(8).names
    for col in ("id", "uri", "size", "etag", "mtime", "sha256", "width", "height", "status",
                "error", "embedding", "run_id"):
        assert col in names
    assert str(dataset.schema(8).field("embedding").type) == "fixed_size_list<item: float>[8]"


def test_failed_rows_have_null_embeddings(tmp_path):
    uri = str(tmp_path / "d.lance")
    rows = [Prepared(SourceItem("a", "a", 1, None, None), "ok"),
            Prepared(SourceItem("b", "b", 0, None, None), "empty", "the file is empty")]
    batch = dataset.rows_to_batch(rows, np.ones((1, DIM), np.float32), DIM, "r")
    frags = dataset.write_fragments([batch], uri, DIM)
    ds = dataset.commit(uri, frags, DIM, META, new_ids={"a", "b"})
    t = ds.to_table().to_pydict()
    assert t["embedding"] == [[1.0] * DIM, None] and t["error"] == [None, "the file is empty"]


def test_ok_vectors_land_on_their_rows_between_failures():
    statuses = ["empty", "ok", "decode_error", "ok", "ok", "empty"]
    rows = [Prepared(SourceItem(str(k), str(k), 1, None, None), s)
            for k, s in enumerate(statuses)]
    vecs = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    got = dataset.rows_to_batch(rows, vecs, DIM, "r").column("embedding").to_pylist()
    assert got == [None, vecs[0].tolist(), None, vecs[1].tolist(), vecs[2].tolist(), None]
    every = dataset.rows_to_batch(rows[1:2], vecs[:1], DIM, "r").column("embedding")
    assert every.to_pylist() == [vecs[0].tolist()]


def test_changed_rows_are_replaced_in_one_version(tmp_path):
    uri = str(tmp_path / "d.lance")
    dataset.commit(uri, _frags(uri, ["a", "b", "c"]), DIM, META, new_ids={"a", "b", "c"})
    ds = dataset.commit(uri, _frags(uri, ["b"], value=2.0), DIM, META, new_ids={"b"},
                        replace_ids={"b"}, base_version=1)
    assert ds.version == 2 and _ids(uri) == ["a", "b", "c"]
    row = ds.to_table(filter="id = 'b'").to_pydict()
    assert row["embedding"] == [[2.0] * DIM]


def test_replacing_rows_touches_only_the_fragments_that_hold_them(tmp_path, monkeypatch):
    """Changed inputs spread over several shards' fragments: only those fragments are
    asked to delete (one emptied is dropped); the others are not even scanned again."""
    from lance.fragment import LanceFragment

    uri = str(tmp_path / "d.lance")
    dataset.commit(uri, _frags(uri, ["a", "b"]), DIM, META, new_ids={"a", "b"})
    for version, shard in enumerate((["c", "d"], ["e"], ["f", "g"]), start=1):
        dataset.commit(uri, _frags(uri, shard), DIM, META, new_ids=set(shard),
                       base_version=version)
    frag_of = {i: f.fragment_id for f in dataset.open_dataset(uri).get_fragments()
               for i in f.to_table(columns=["id"])["id"].to_pylist()}
    assert len(set(frag_of.values())) == 4
    asked: list[int] = []
    real_delete = LanceFragment.delete

    def delete(self, predicate):
        asked.append(self.fragment_id)
        return real_delete(self, predicate)

    monkeypatch.setattr(LanceFragment, "delete", delete)
    ds = dataset.commit(uri, _frags(uri, ["b", "e", "g"], value=2.0), DIM, META,
                        new_ids={"b", "e", "g"}, replace_ids={"b", "e", "g", "zz"},
                        base_version=4)
    assert sorted(asked) == sorted({frag_of["b"], frag_of["e"], frag_of["g"]})
    assert _ids(uri) == ["a", "b", "c", "d", "e", "f", "g"]
    after = {f.fragment_id: f.metadata.deletion_file for f in ds.get_fragments()}
    assert frag_of["e"] not in after  # emptied, dropped
    assert after[frag_of["c"]] is None  # c and d's fragment is as it was
    assert after[frag_of["a"]] is not None and after[frag_of["f"]] is not None
    new = ds.to_table(filter="id IN ('b', 'e', 'g')").to_pydict()
    assert new["embedding"] == [[2.0] * DIM] * 3


def test_concurrent_runs_planned_on_one_version_leave_one_row_per_id(tmp_path):
    uri = str(tmp_path / "d.lance")
    dataset.commit(uri, _frags(uri, ["a"]), DIM, META, new_ids={"a"})
    one, two = _frags(uri, ["b", "c"], "r1"), _frags(uri, ["c", "d"], "r2")
    dataset.commit(uri, one, DIM, META, new_ids={"b", "c"}, base_version=1)
    dataset.commit(uri, two, DIM, META, new_ids={"c", "d"}, base_version=1)
    assert _ids(uri) == ["a", "b", "c", "d"]


def test_lost_creation_race_keeps_the_other_runs_rows(tmp_path, monkeypatch):
    uri = str(tmp_path / "d.lance")
    first, second = _frags(uri, ["a", "b"], "r1"), _frags(uri, ["b", "c"], "r2")
    dataset.commit(uri, first, DIM, META, new_ids={"a", "b"})
    monkeypatch.setattr(dataset, "open_dataset", lambda *a, **k: None)  # planned before it
    dataset.commit(uri, second, DIM, META, new_ids={"b", "c"})
    monkeypatch.undo()
    assert _ids(uri) == ["a", "b", "c"]


def test_dataset_of_another_model_is_refused(tmp_path):
    from clipvec_tasks.errors import ClipvecError

    uri = str(tmp_path / "d.lance")
    ds = dataset.commit(uri, _frags(uri, ["a"]), DIM, META, new_ids={"a"})
    dataset.check_compatible(ds, "f", DIM, uri)
    with pytest.raises(ClipvecError, match="another model configuration"):
        dataset.check_compatible(ds, "g", DIM, uri)
