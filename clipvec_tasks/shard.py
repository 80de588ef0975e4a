"""The shard stream: read -> decode -> preprocess -> batch -> embed -> Arrow batches.

Reads and decodes run ahead in a thread pool (bounded look-ahead, so memory
stays flat whatever the shard size); the model runs on the calling thread.
Every input yields exactly one row, in input order; per-image failures are
rows with a status, never exceptions.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import torch

from .dataset import rows_to_batch
from .decode import DecodePolicy, decode_image
from .embedder import Embedder
from .retry import is_transient, with_retries
from .sources import SourceItem


@dataclass(slots=True)
class Prepared:
    """One input after read and decode: a row waiting for its embedding."""

    item: SourceItem
    status: str
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    inputs: list[torch.Tensor] | None = None


def prepare(item: SourceItem, read: Callable[[str], bytes], embedder: Embedder,
            policy: DecodePolicy) -> Prepared:
    """Read, hash, decode and preprocess one input; only exhausted transient errors raise."""
    try:
        data = with_retries(lambda: read(item.uri))
    except Exception as e:
        if is_transient(e):
            raise  # the shard is retried as a whole
        return Prepared(item, "io_error", f"{type(e).__name__}: {e}"[:300])
    digest = hashlib.sha256(data).hexdigest()
    decoded = decode_image(data, item.uri, policy)
    if decoded.image is None:
        return Prepared(item, decoded.status, decoded.error, digest)
    try:
        inputs = embedder.preprocess(decoded.image)
    except Exception as e:  # a transform that cannot take this image
        return Prepared(item, "decode_error", f"preprocess: {type(e).__name__}: {e}"[:300],
                        digest, decoded.width, decoded.height, decoded.frames)
    return Prepared(item, "ok", None, digest, decoded.width, decoded.height, decoded.frames,
                    inputs)


def embed_items(
    items: Iterable[SourceItem],
    embedder: Embedder,
    read: Callable[[str], bytes],
    run_id: str,
    batch_size: int = 32,
    workers: int | None = None,
    policy: DecodePolicy | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield one Arrow batch per model batch, rows in input order."""
    workers = workers or min(8, (os.cpu_count() or 2))
    policy = policy or DecodePolicy()
    lookahead = max(2 * batch_size, 4 * workers)
    window: list[Prepared] = []
    ok = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="clipvec-decode") as pool:
        pending: deque[Future[Prepared]] = deque()
        it = iter(items)

        def fill() -> None:
            while len(pending) < lookahead:
                item = next(it, None)
                if item is None:
                    return
                pending.append(pool.submit(prepare, item, read, embedder, policy))

        fill()
        while pending:
            p = pending.popleft().result()
            fill()
            window.append(p)
            ok += p.status == "ok"
            if ok >= batch_size:
                yield _flush(window, embedder, run_id, on_rows)
                window, ok = [], 0
        if window:
            yield _flush(window, embedder, run_id, on_rows)


def _flush(window: list[Prepared], embedder: Embedder, run_id: str,
           on_rows: Callable[[int], None] | None) -> pa.RecordBatch:
    oks = [p for p in window if p.status == "ok"]
    vectors = embedder.embed([p.inputs for p in oks])  # type: ignore[misc]
    for p in oks:
        p.inputs = None  # free the tensors as soon as they are embedded
    batch = rows_to_batch(window, vectors, embedder.dim, run_id)
    if on_rows:
        on_rows(len(window))
    return batch
