"""List the images of a source: a local folder, a file, a glob, or any fsspec URI."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from .errors import ClipvecError

# what is picked by name; content is confirmed at decode time
_EXTS = (".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm "
         ".tga .ico .jp2 .j2k .jpx .mpo .heic .heif .avif .svg .sgi .rgb .dds .pcx .psd .qoi")
IMAGE_EXTENSIONS = frozenset(_EXTS.split())
_GLOB_CHARS = "*?["


@dataclass(slots=True, frozen=True)
class SourceItem:
    """One input image and the fingerprint that incremental runs compare."""

    id: str
    uri: str
    size: int
    etag: str | None
    mtime: datetime | None


# a listing's columns, what a run plans from; ``uri`` is null where it equals ``id`` (as
# it does for every source today), so the string is held once
LISTING = pa.schema([("id", pa.string()), ("uri", pa.string()), ("size", pa.int64()),
                     ("etag", pa.string()), ("mtime", pa.timestamp("us", tz="UTC"))])
_CHUNK = 65_536
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def listing_table(items: Iterable[SourceItem]) -> pa.Table:
    """``items`` as a LISTING table, converted a chunk at a time (never all as objects)."""
    it = iter(items)
    batches = []
    while chunk := list(islice(it, _CHUNK)):
        batches.append(pa.record_batch([
            pa.array([i.id for i in chunk], pa.string()),
            pa.array([None if i.uri == i.id else i.uri for i in chunk], pa.string()),
            pa.array([i.size for i in chunk], pa.int64()),
            pa.array([i.etag or None for i in chunk], pa.string()),
            pa.array([i.mtime for i in chunk], LISTING.field("mtime").type),
        ], schema=LISTING))
    return pa.Table.from_batches(batches, LISTING)


def source_items(rows: pa.Table, chunk: int | None = None) -> Iterator[SourceItem]:
    """The rows of a LISTING table as SourceItems (made ``chunk`` rows at a time)."""
    for batch in rows.to_batches(max_chunksize=chunk):
        cols = [batch.column(name).to_pylist() for name in ("id", "uri", "size", "etag")]
        # aware datetimes from integers: 5x faster than Arrow's own conversion through
        # the time zone database (4.5 s a million rows on these cores)
        micros = pc.cast(batch.column("mtime"), pa.int64()).to_pylist()
        mtimes = [None if t is None else _EPOCH + _MICROSECOND * t for t in micros]
        for id_, uri, size, etag, mtime in zip(*cols, mtimes, strict=True):
            yield SourceItem(id_, uri or id_, size, etag, mtime)


def null_if_empty(etags: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """An empty etag is no etag (the mtime decides), as ``SourceItem``s have it."""
    return pc.if_else(pc.equal(etags, ""), pa.scalar(None, etags.type), etags)


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _item(fs: AbstractFileSystem, path: str, info: dict[str, Any]) -> SourceItem:
    uri = fs.unstrip_protocol(path)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") \
        or info.get("last_modified")
    return SourceItem(uri, uri, int(info.get("size") or 0), str(etag).strip('"') if etag else None,
                      _datetime(mtime))


def _datetime(value: Any) -> datetime | None:
    """A modification time as an aware datetime: from epoch seconds, an ISO string or a
    datetime (naive ones are UTC); None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        try:
            return datetime.fromtimestamp(float(text), tz=UTC)
        except (ValueError, OverflowError, OSError):
            pass
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def resolve(uri: str, storage_options: dict[str, Any] | None = None
            ) -> tuple[AbstractFileSystem, str]:
    """The filesystem and root path of ``uri`` (local paths made absolute)."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ImportError as e:
        raise ClipvecError(
            f"Reading '{uri}' needs an fsspec backend that is not installed ({e}). "
            "Install clipvec's extra for it: pip install -e '.[s3]' (or gcs, azure)."
        ) from e


LIST_SUFFIXES = (".parquet", ".csv")
URI_COLUMNS = ("uri", "url", "path", "image_url", "filepath", "image_path")


def list_images(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[SourceItem]:
    """Yield every image under ``uri`` in a stable (sorted) order.

    Folders are walked recursively, one directory at a time; hidden files and
    folders (``.name``) are skipped. A path that exists is taken literally, so
    names holding ``[`` or ``?`` are not mistaken for globs. WebDataset shards
    (``*.tar``) yield their image members; a ``.parquet``/``.csv`` file given as
    the source is a list of image URIs (img2dataset's output, for one).
    """
    fs, root = resolve(uri, storage_options)
    fs.invalidate_cache()  # a listing cached by an earlier run in this process is stale
    try:
        if fs.isfile(root):
            if root.lower().endswith(LIST_SUFFIXES):
                yield from _uri_list(fs, root)
            elif root.lower().endswith(".tar"):
                yield from _tar_members(fs, root, fs.info(root))
            else:
                yield _item(fs, root, fs.info(root))
            return
        if fs.isdir(root):
            yield from _walk(fs, root)
            return
    except PermissionError as e:
        raise ClipvecError(f"Access to the source '{uri}' was denied: {e}") from e
    if any(c in root for c in _GLOB_CHARS):
        for path, info in sorted(fs.glob(root, detail=True).items()):
            if info.get("type") == "directory":
                yield from _walk(fs, path)
            elif is_image_name(path):
                yield _item(fs, path, info)
        return
    raise ClipvecError(
        f"The source '{uri}' does not exist. Set source.uri to a folder, a file, a glob "
        "(e.g. 'photos/**/*.jpg') or a bucket URI such as s3://bucket/prefix."
    )


def list_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The images under ``uri`` as a LISTING table, in :func:`list_images`' order: what a
    run plans from. A list file is converted column by column, without an object per
    row (a list of 100 million images in seconds of CPU, not minutes)."""
    if uri.lower().endswith(LIST_SUFFIXES):
        fs, root = resolve(uri, storage_options)
        fs.invalidate_cache()
        try:
            if fs.isfile(root):
                return pa.Table.from_batches(list(_uri_list_batches(fs, root)), LISTING)
        except PermissionError as e:
            raise ClipvecError(f"Access to the source '{uri}' was denied: {e}") from e
    return listing_table(list_images(uri, storage_options))


# folders of a bucket listed ahead of the walk, and the most listed entries held
# before the walk takes them: a bucket's listing is request after request otherwise
LIST_AHEAD = 16
_HELD_MAX = 1_000_000


def _walk(fs: AbstractFileSystem, root: str, ahead: int | None = None) -> Iterator[SourceItem]:
    """The images under folder ``root``, depth first: a folder's files in name order,
    then its subfolders in name order (hidden names skipped; tars expanded).

    On a remote filesystem up to ``ahead`` folders (:data:`LIST_AHEAD`) are listed at
    once, in threads, in the order the walk will take them; the order of the items is
    the same either way. Each listing is dropped from the filesystem's own cache as soon
    as it is read: s3fs, gcsfs and adlfs keep every listing for the life of the process
    otherwise (about 1.2 KB per object).
    """
    if ahead is None:
        ahead = 0 if isinstance(fs, LocalFileSystem) else LIST_AHEAD
    pending: deque[str] = deque([root])  # folders in the order they are walked
    listing: dict[str, Future[tuple[list[SourceItem], list[str]]]] = {}
    pool = ThreadPoolExecutor(ahead, thread_name_prefix="clipvec-list") if ahead else None
    try:
        while pending:
            if pool is not None:
                _list_ahead(fs, pool, pending, listing, ahead)
            path = pending.popleft()
            future = listing.pop(path, None)
            items, folders = future.result() if future else _folder(fs, path)
            pending.extendleft(reversed(folders))
            yield from items
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _list_ahead(fs: AbstractFileSystem, pool: ThreadPoolExecutor, pending: deque[str],
                listing: dict[str, Future], ahead: int) -> None:
    """Start listing the next folders of the walk: at most ``ahead`` listings running or
    waiting to be taken, and no new one while those hold :data:`_HELD_MAX` entries."""
    held = sum(len(f.result()[0]) for f in listing.values()
               if f.done() and f.exception() is None)
    if held >= _HELD_MAX:
        return
    for path in islice(pending, ahead):
        if len(listing) >= ahead:
            return
        if path not in listing:
            listing[path] = pool.submit(_folder, fs, path)


def _folder(fs: AbstractFileSystem, path: str) -> tuple[list[SourceItem], list[str]]:
    """One folder: its images (and tar shards' members) in name order, its subfolders."""
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:  # gone since its parent was listed
        return [], []
    finally:
        fs.invalidate_cache(path)
    here = path.rstrip("/")
    files, folders = [], []
    for info in entries:
        full = info["name"].rstrip("/")
        name = full.rsplit("/", 1)[-1]
        if full == here or not name or name.startswith("."):
            continue
        if info.get("type") == "directory":
            folders.append((name, full))
        else:
            files.append((name, full, info))
    items: list[SourceItem] = []
    for name, full, info in sorted(files, key=lambda f: f[0]):
        if name.lower().endswith(".tar"):
            items.extend(_tar_members(fs, full, info))
        elif is_image_name(name):
            items.append(_item(fs, full, info))
    return items, [full for _, full in sorted(folders)]


def _tar_members(fs: AbstractFileSystem, path: str, info: dict[str, Any]
                 ) -> Iterator[SourceItem]:
    """Images inside a tar (a WebDataset shard), as ``tar://member::<tar uri>`` items.

    Their fingerprint is the member's size with the tar's etag/mtime: a rewritten
    shard is embedded again.
    """
    outer = _item(fs, path, info)
    tar = fsspec.filesystem("tar", fo=outer.uri, target_options=fs.storage_options or None)
    for name, member in sorted(tar.find("", detail=True).items()):
        if is_image_name(name) and not name.rsplit("/", 1)[-1].startswith("."):
            member_uri = f"tar://{name}::{outer.uri}"
            yield SourceItem(member_uri, member_uri, int(member.get("size") or 0), outer.etag,
                             outer.mtime)


def _uri_list(fs: AbstractFileSystem, path: str) -> Iterator[SourceItem]:
    """Rows of a Parquet/CSV list of images (see :func:`_uri_list_batches`)."""
    for batch in _uri_list_batches(fs, path):
        yield from source_items(pa.Table.from_batches([batch]))


def _uri_list_batches(fs: AbstractFileSystem, path: str) -> Iterator[pa.RecordBatch]:
    """A Parquet/CSV list of images as LISTING batches: a uri/url/path column; optional
    size, etag, mtime. Relative paths are taken from the list's folder; empty rows are
    skipped. Read in batches and converted column-wise, so a list of millions of rows is
    never held whole, nor as Python objects."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    base = fs.unstrip_protocol(path).rsplit("/", 1)[0]
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            # only the columns used: img2dataset's lists carry captions, EXIF and more
            wanted = [n for n in names if n.lower() in (*URI_COLUMNS, "size", "etag", "mtime")]
            batches = parquet.iter_batches(batch_size=_CHUNK, columns=wanted or None)
        else:
            batches = iter(pacsv.open_csv(f))
        for batch in batches:
            cols = {c.lower(): c for c in batch.schema.names}
            col = next((cols[c] for c in URI_COLUMNS if c in cols), None)
            if col is None:
                raise ClipvecError(
                    f"The list '{path}' has no column naming images; expected one of "
                    f"{', '.join(URI_COLUMNS)} (it has {', '.join(batch.schema.names)}).")
            try:
                yield _listed_rows(batch, col, cols, base)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ClipvecError(
                    f"The list '{path}' has a column clipvec cannot read ({e}). Its "
                    f"'{col}' column must hold text; size, if present, numbers of bytes; "
                    "etag text; mtime timestamps, epoch seconds or ISO 8601 text.") from None


def _listed_rows(batch: pa.RecordBatch, col: str, cols: dict[str, str], base: str
                 ) -> pa.RecordBatch:
    """One batch of a list file as a LISTING batch."""
    refs = pc.cast(batch.column(col), pa.string())
    keep = pc.fill_null(pc.not_equal(refs, ""), False)
    batch, refs = batch.filter(keep), refs.filter(keep)
    text = pa.string()
    uri = pc.if_else(
        pc.match_substring(refs, "://"), refs,
        pc.if_else(pc.starts_with(refs, "/"),
                   pc.binary_join_element_wise(pa.scalar("file://", text), refs, ""),
                   pc.binary_join_element_wise(pa.scalar(base + "/", text), refs, "")))
    n = batch.num_rows
    size = (pc.fill_null(pc.cast(batch.column(cols["size"]), pa.int64(), safe=False), 0)
            if "size" in cols else pa.array([0] * n, pa.int64()))
    etag = (pc.cast(batch.column(cols["etag"]), text) if "etag" in cols
            else pa.nulls(n, text))
    etag = null_if_empty(etag)
    mtime = _mtimes(batch.column(cols["mtime"])) if "mtime" in cols \
        else pa.nulls(n, LISTING.field("mtime").type)
    return pa.record_batch([uri, pa.nulls(n, text), size, etag, mtime], schema=LISTING)


def _mtimes(values: pa.Array) -> pa.Array:
    """A list's mtime column as UTC instants: timestamps (naive ones are UTC) as they are,
    numbers as epoch seconds, anything else (text) value by value as :func:`_datetime`
    reads it."""
    target = LISTING.field("mtime").type
    if pa.types.is_timestamp(values.type):
        return pc.cast(values, target, safe=False)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        seconds = pc.cast(values, pa.float64())
        return pc.cast(pc.cast(pc.round(pc.multiply(seconds, 1e6)), pa.int64(), safe=False),
                       target)
    return pa.array([_datetime(v) for v in values.to_pylist()], target)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content of one input (local files without fsspec's per-call overhead)."""
    if uri.startswith("file://") and not storage_options:
        with open(uri[len("file://"):], "rb") as f:
            return f.read()
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()
