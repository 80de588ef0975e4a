"""Listing: folders recursively, single files, globs, literal odd names, errors."""

from __future__ import annotations

import pytest

from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.sources import list_images
from tests.conftest import make_image


def _names(uri):
    return [i.id.rsplit("/", 1)[-1] for i in list_images(str(uri))]


def test_folder_is_walked_recursively_in_stable_order(image_dir):
    items = list(list_images(str(image_dir)))
    assert len(items) == 7 and len({i.id for i in items}) == 7
    assert items == list(list_images(str(image_dir)))
    assert all(i.size > 0 and i.mtime is not None for i in items)


def test_single_file_and_glob(image_dir):
    assert _names(image_dir / "a.jpg") == ["a.jpg"]
    assert sorted(_names(f"{image_dir}/sub/**/*.png")) == ["f.png"]
    assert sorted(_names(f"{image_dir}/*.jpg")) == ["a.jpg"]


def test_hidden_files_and_non_images_are_skipped(tmp_path):
    make_image(tmp_path / "x.png")
    make_image(tmp_path / ".hidden.png")
    make_image(tmp_path / ".cache" / "y.png")
    (tmp_path / "x.txt").write_text("no")
    assert _names(tmp_path) == ["x.png"]


@pytest.mark.parametrize("name", ["é ü 写真.jpg", "with space.png", "hash#1.png", "pct%20.png",
                                  "q?.png", "br[1].png"])
def test_odd_names_round_trip(tmp_path, name):
    path = make_image(tmp_path / name, fmt="PNG")
    (item,) = list(list_images(str(tmp_path)))
    assert item.id == f"file://{path}" and item.uri == item.id
    assert (item,) == tuple(list_images(str(path)))  # the literal path, not a glob


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ClipvecError, match="does not exist"):
        list(list_images(str(tmp_path / "nope")))


def _tar(path, names):
    import io
    import tarfile

    with tarfile.open(path, "w") as tf:
        for n in names:
            data = make_image(path.parent / "tmp.png", seed=len(n), fmt="PNG").read_bytes() \
                if n.endswith(".png") else b"caption"
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (path.parent / "tmp.png").unlink(missing_ok=True)
    return path


def test_webdataset_shards_yield_their_images(tmp_path):
    from clipvec_tasks.sources import read_bytes

    (tmp_path / "shards").mkdir()
    _tar(tmp_path / "shards" / "00000.tar", ["a.png", "a.txt", "b.png", "b.json"])
    _tar(tmp_path / "shards" / "00001.tar", ["c.png"])
    items = list(list_images(str(tmp_path / "shards")))
    assert [i.id.split("::")[0] for i in items] == ["tar://a.png", "tar://b.png", "tar://c.png"]
    assert items[0].id.endswith("::file://" + str(tmp_path / "shards" / "00000.tar"))
    assert read_bytes(items[2].uri)[:4] == b"\x89PNG"
    assert len(list(list_images(str(tmp_path / "shards" / "00001.tar")))) == 1


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_uri_list_parquet_or_csv(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    a = make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.png")
    table = pa.table({"key": ["1", "2"], "url": [str(a), "imgs/b.png"]})
    path = tmp_path / f"list.{fmt}"
    (pq.write_table if fmt == "parquet" else pacsv.write_csv)(table, path)
    items = list(list_images(str(path)))
    assert [i.uri for i in items] == [f"file://{a}", f"file://{tmp_path}/imgs/b.png"]


def test_uri_list_without_a_uri_column_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["x"]}), tmp_path / "l.parquet")
    with pytest.raises(ClipvecError, match="no column naming images"):
        list(list_images(str(tmp_path / "l.parquet")))


def test_uri_list_mtimes_become_aware_datetimes(tmp_path):
    """A list's mtime column may be epoch seconds, ISO text or timestamps: every form is
    read as the same instant (an epoch number is not mistaken for microseconds)."""
    from datetime import UTC, datetime

    when = datetime(2024, 5, 17, 8, 30, 12, tzinfo=UTC)
    (tmp_path / "l.csv").write_text(
        "uri,size,mtime\n"
        f"a.jpg,1,{int(when.timestamp())}\n"
        "b.jpg,2,2024-05-17T08:30:12Z\n"
        "c.jpg,3,2024-05-17 08:30:12\n"
        "d.jpg,4,\n")
    items = list(list_images(str(tmp_path / "l.csv")))
    assert [i.mtime for i in items] == [when, when, when, None]


def _tree(fs, root: str) -> list[str]:
    """A tree whose order matters: files before subfolders, names not in path order."""
    paths = ["b.jpg", "a/z.jpg", "a/b/x.png", "a/b/.hidden.png", "a.jpg", "a/notes.txt",
             "c/d/e/f.webp", "c/d/g.jpg", ".cache/h.jpg", "b0/i.jpg"]
    for p in paths:
        fs.makedirs(f"{root}/{p}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe(f"{root}/{p}", b"x")
    return ["a.jpg", "b.jpg", "a/z.jpg", "a/b/x.png", "b0/i.jpg", "c/d/g.jpg", "c/d/e/f.webp"]


def test_remote_folders_are_listed_ahead_in_threads_in_the_same_order():
    """A bucket's folders are listed several at once (each listing is a request, or a
    chain of them), yet the items come in the one walk order, with no listing left
    in the filesystem's cache and never more than ``ahead`` listings in flight."""
    import threading
    import time

    import fsspec

    from clipvec_tasks import sources

    fs = fsspec.filesystem("memory")
    root = "/clipvec-walk"
    expected = _tree(fs, root)
    for k in range(12):
        fs.pipe(f"{root}/many/{k:02d}/img.jpg", b"x")
    expected += [f"many/{k:02d}/img.jpg" for k in range(12)]
    running, most, lock = 0, 0, threading.Lock()
    plain_ls = fs.ls

    def slow_ls(path, detail=True, **kw):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return plain_ls(path, detail=detail, **kw)

    fs.ls = slow_ls
    try:
        sequential = [i.id for i in sources._walk(fs, root, ahead=0)]
        assert most == 1
        ahead = [i.id for i in sources._walk(fs, root, ahead=4)]
    finally:
        fs.rm(root, recursive=True)
    assert sequential == [f"memory://{root}/{p}" for p in expected]
    assert ahead == sequential
    assert 1 < most <= 4


def test_local_walk_order(tmp_path):
    import fsspec

    expected = _tree(fsspec.filesystem("file"), str(tmp_path))
    assert [i.id for i in list_images(str(tmp_path))] == [
        f"file://{tmp_path}/{p}" for p in expected]


def test_a_long_list_without_optional_columns_lists_in_linear_time(tmp_path):
    """130,000 rows (two read batches) of uris alone, beside a caption column: each row's
    missing size/etag/mtime once cost a list as long as its index (quadratic: ~10 s)."""
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 130_000
    pq.write_table(pa.table({"URL": [f"s3://b/{i:09d}.jpg" for i in range(n)],
                             "caption": ["words " * 10] * n}), tmp_path / "l.parquet")
    t0 = time.perf_counter()
    items = list(list_images(str(tmp_path / "l.parquet")))
    assert time.perf_counter() - t0 < 4
    assert len(items) == n and items[-1].uri == f"s3://b/{n - 1:09d}.jpg"
    assert items[0].size == 0 and items[0].etag is None and items[0].mtime is None


def test_a_list_file_becomes_the_same_listing_column_wise(tmp_path):
    """list_table reads a list file without an object per row; what it makes is what the
    item-by-item listing makes: uris resolved (absolute, rooted, relative), empty rows
    skipped, sizes, etags and mtimes of any column type."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipvec_tasks.sources import list_table, listing_table

    when = datetime(2024, 5, 17, 8, 30, 12, tzinfo=UTC)
    secs = int(when.timestamp())
    refs = ["s3://b/a.jpg", "/data/b.jpg", "sub/c.jpg", "", None, "d.jpg"]
    mtime_columns = {
        "naive timestamps": pa.array([when.replace(tzinfo=None)] * 6, pa.timestamp("s")),
        "zoned timestamps": pa.array([when] * 6, pa.timestamp("ms", tz="Asia/Tokyo")),
        "epoch integers": pa.array([secs] * 6, pa.int64()),
        "epoch floats": pa.array([secs + 0.0] * 6, pa.float64()),
        "iso text": pa.array(["2024-05-17T08:30:12Z"] * 6),
    }
    for kind, mtimes in mtime_columns.items():
        path = tmp_path / f"{kind.replace(' ', '_')}.parquet"
        pq.write_table(pa.table({"Path": refs, "size": [1.0, 2.0, None, 4.0, 5.0, 6.0],
                                 "etag": [7, None, 9, 10, 11, 12], "mtime": mtimes,
                                 "caption": ["x"] * 6}), path)
        table = list_table(str(path))
        assert table == listing_table(list_images(str(path))), kind
        assert table.column("id").to_pylist() == [
            "s3://b/a.jpg", "file:///data/b.jpg", f"file://{tmp_path}/sub/c.jpg",
            f"file://{tmp_path}/d.jpg"], kind
        assert table.column("size").to_pylist() == [1, 2, 0, 6], kind
        assert table.column("etag").to_pylist() == ["7", None, "9", "12"], kind
        assert set(table.column("mtime").to_pylist()) == {when}, kind


def test_a_list_with_an_unreadable_column_is_a_clear_error(tmp_path):
    (tmp_path / "l.csv").write_text("uri,size\na.jpg,12\nb.jpg,twelve\n")
    with pytest.raises(ClipvecError, match="size, if present, numbers of bytes"):
        list(list_images(str(tmp_path / "l.csv")))
