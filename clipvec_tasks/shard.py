"""The shard stream: read -> decode -> preprocess -> batch -> embed -> Arrow batches.

Reads and CPU decodes run ahead in a thread pool (bounded look-ahead, so memory
stays flat whatever the shard size); the model runs on the calling thread.
Every input yields exactly one row, in input order; per-image failures are
rows with a status, never exceptions.

Two preprocessing paths:
- ``pil`` (CPU default): each member's upstream PIL transform, in the threads.
- ``tensor`` (GPU default): JPEGs decoded in batches on the GPU (nvJPEG), other
  files on the CPU, then every member's resize/crop/normalise done for the whole
  batch on the GPU (:mod:`tensor_preprocess`). Decode and preprocessing each run
  in a thread on their own CUDA stream, so that while the model runs on one
  batch, the next is resized and the one after it decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .dataset import rows_to_batch
from .decode import DecodePolicy, decode_image
from .embedder import Embedder
from .jpeg import decode_jpegs_on_device
from .readahead import Read, ShareControl, fetch
from .sources import SourceItem
from .tensor_preprocess import upload


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
    inputs: list[torch.Tensor] | None = None  # pil path: each member's input
    pixels: torch.Tensor | None = None  # tensor path: uint8 [3, H, W] on the device
    host: np.ndarray | None = None  # tensor path: uint8 [H, W, 3] decoded on the CPU
    crops: list[np.ndarray] | None = None  # tensor path: decoded and resized on the CPU
    jpeg: bytes | None = None  # tensor path: to be decoded on the device
    orientation: int = 1  # tensor path: the JPEG's EXIF orientation


def prepare(item: SourceItem, read: Callable[[str], bytes], embedder: Embedder,
            policy: DecodePolicy) -> Prepared:
    """PIL path: read, hash, decode and preprocess one input (failures are rows)."""
    data = fetch(item, read)
    if isinstance(data, Read):
        return _from_read(item, data)
    digest = hashlib.sha256(data).hexdigest()
    decoded = decode_image(data, item.uri, policy)
    if decoded.image is None:
        return Prepared(item, decoded.status, decoded.error, digest)
    p = Prepared(item, "ok", None, digest, decoded.width, decoded.height, decoded.frames)
    try:
        p.inputs = embedder.preprocess(decoded.image)
    except Exception as e:  # a transform that cannot take this image
        p.status, p.error = "decode_error", f"preprocess: {type(e).__name__}: {e}"[:300]
    return p


def _from_read(item: SourceItem, r: Read) -> Prepared:
    """A row from what a reader (thread or process) sent back."""
    return Prepared(item, r.status, r.error, r.sha256, r.width, r.height, r.frames,
                    host=r.pixels, crops=r.crops, jpeg=r.jpeg, orientation=r.orientation)


def embed_items(
    items: Iterable[SourceItem],
    embedder: Embedder,
    read: Callable[[str], bytes],
    run_id: str,
    batch_size: int = 32,
    workers: int | None = None,
    policy: DecodePolicy | None = None,
    on_rows: Callable[[int], None] | None = None,
    preprocess: str = "auto",
    read_processes: int = 0,
    cpu_share: float | None = 0.0,
    stats: dict[str, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield one Arrow batch per model batch, rows in input order.

    On the tensor path, ``read_processes`` > 0 reads ahead in that many spawned
    worker processes instead of threads (``read`` must then pickle), and
    ``cpu_share`` of the JPEGs are decoded and resized by the readers with Pillow
    rather than on the GPU; None steers that share (``readahead.ShareControl``).
    ``stats`` counts, on the tensor path, the ok images that reached the device as
    JPEGs (``device_decoded``) and as crops the readers made (``reader_resized``).
    """
    policy = policy or DecodePolicy()
    tensor_path = _use_tensor_path(preprocess, embedder)
    prepared = prepared_stream(items, embedder, read, policy, tensor_path, batch_size, workers,
                               read_processes, cpu_share)
    windows = _windows(prepared, batch_size, WINDOW_PIXELS if tensor_path else None)
    if not tensor_path:
        for window in windows:
            oks = [p for p in window if p.status == "ok"]
            vectors = embedder.embed([p.inputs for p in oks])  # type: ignore[misc]
            yield _rows(window, vectors, embedder, run_id, on_rows)
        return
    # the stage threads launch many small GPU ops; with readers busy in Python, the
    # default 5 ms GIL switch interval would make them wait that long for each of them
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.0005))
    try:
        # batch k+1 is launched before batch k's vectors are collected (and its rows
        # built and written), so the GPU does not wait on that host work; batch k's
        # inputs stay referenced until then, as its kernels may still read them
        pending = None
        for window, inputs, event in _tensor_stages(windows, embedder, policy, stats):
            if event is not None:
                torch.cuda.current_stream(embedder.device).wait_event(event)
            started = (window, inputs, embedder.start_encode(inputs) if inputs else None)
            if pending is not None:
                yield _finish(pending, embedder, run_id, on_rows)
            pending = started
        if pending is not None:
            yield _finish(pending, embedder, run_id, on_rows)
    finally:
        sys.setswitchinterval(interval)


def _finish(pending: tuple[list[Prepared], list[torch.Tensor], Any], embedder: Embedder,
            run_id: str, on_rows: Callable[[int], None] | None) -> pa.RecordBatch:
    window, _inputs, handle = pending
    vectors = (embedder.finish_encode(handle) if handle is not None
               else np.zeros((0, embedder.dim), np.float32))
    return _rows(window, vectors, embedder, run_id, on_rows)


def _use_tensor_path(preprocess: str, embedder: Embedder) -> bool:
    if preprocess == "pil":
        return False
    if preprocess == "tensor":
        if not embedder.supports_tensors:
            raise ValueError("a member's preprocessing has no tensor equivalent; use pil")
        return True
    return embedder.device.type == "cuda" and embedder.supports_tensors


def _rows(window: list[Prepared], vectors: np.ndarray, embedder: Embedder, run_id: str,
          on_rows: Callable[[int], None] | None) -> pa.RecordBatch:
    for p in window:  # free images as soon as they are embedded
        p.inputs = p.pixels = p.host = p.crops = p.jpeg = None
    batch = rows_to_batch(window, vectors, embedder.dim, run_id)
    if on_rows:
        on_rows(len(window))
    return batch


def _tensor_stages(windows: Iterable[list[Prepared]], embedder: Embedder, policy: DecodePolicy,
                   stats: dict[str, int] | None = None,
                   ) -> Iterator[tuple[list[Prepared], list[torch.Tensor], Any]]:
    """(window, each member's input batch, event to wait for) per window.

    On a GPU, decoding and preprocessing are two threads, each on its own CUDA
    stream, two windows ahead of the next: nvJPEG's batched decode blocks its thread
    (without the interpreter lock) while the previous window is resized and the one
    before it runs through the model, so the three overlap.
    """
    device = embedder.device
    if device.type != "cuda":
        for window in windows:
            _, mixed = _decode_window(window, device, policy, None, stats)
            yield window, _preprocess_window(window, embedder, None, mixed), None
        return
    decode_stream, prep_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def decode() -> Iterator[tuple[list[Prepared], Any, Any]]:
        for window in windows:
            yield window, *_decode_window(window, device, policy, decode_stream, stats)

    def prepare_inputs() -> Iterator[tuple[list[Prepared], list[torch.Tensor], Any]]:
        for window, decoded, mixed in _background(decode(), 2, "clipvec-decode"):
            prep_stream.wait_event(decoded)
            if mixed is not None:  # made on the decode stream, dropped before prep's kernels
                for t in (mixed[1], mixed[2], *mixed[3]):  # run: no reuse until they have
                    t.record_stream(prep_stream)
            yield (window, _preprocess_window(window, embedder, prep_stream, mixed),
                   _record(prep_stream))

    yield from _background(prepare_inputs(), 2, "clipvec-preprocess")


def _record(stream: Any) -> Any:
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _to_device(x: np.ndarray | list[int], device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else torch.tensor(x, dtype=torch.int64)
    return upload(t, device)


def _decode_window(window: list[Prepared], device: torch.device, policy: DecodePolicy,
                   stream: Any, stats: dict[str, int] | None = None) -> tuple[Any, Any]:
    """Every ok row's pixels as uint8 [3, H, W] on ``device``: JPEGs decoded there in one
    batch, CPU-decoded images copied from pinned memory; rows the readers already
    resized are copied as crops (the ``mixed`` of ``Embedder.preprocess_tensors``).
    Returns (the stream's event, mixed or None)."""
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        jpegs = [p for p in window if p.status == "ok" and p.jpeg is not None]
        decoded = decode_jpegs_on_device([p.jpeg for p in jpegs],  # type: ignore[misc]
                                         device, [p.orientation for p in jpegs])
        on_device = 0
        for p, t in zip(jpegs, decoded, strict=True):
            if t is None or t.shape[0] != 3:  # the GPU could not: the CPU policy decides
                _cpu_fallback(p, policy)
            else:
                p.pixels, p.height, p.width = t, int(t.shape[1]), int(t.shape[2])
                on_device += 1
            p.jpeg = None
        for p in window:
            if p.status == "ok" and p.host is not None:
                p.pixels = _to_device(p.host, device).permute(2, 0, 1).contiguous()
                p.host = None
        oks = [p for p in window if p.status == "ok"]
        on_cpu = [i for i, p in enumerate(oks) if p.crops is not None]
        if stats is not None:
            stats["device_decoded"] = stats.get("device_decoded", 0) + on_device
            stats["reader_resized"] = stats.get("reader_resized", 0) + len(on_cpu)
        mixed = None
        if on_cpu:
            on_gpu = [i for i, p in enumerate(oks) if p.crops is None]
            crops = [_to_device(np.stack([oks[i].crops[k] for i in on_cpu]), device)  # type: ignore[index]
                     for k in range(len(oks[on_cpu[0]].crops))]  # type: ignore[arg-type]
            for i in on_cpu:
                oks[i].crops = None
            mixed = (len(oks), _to_device(on_gpu, device), _to_device(on_cpu, device), crops)
        return (_record(stream) if stream is not None else None), mixed


def _preprocess_window(window: list[Prepared], embedder: Embedder, stream: Any,
                       mixed: Any = None) -> list[torch.Tensor]:
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        oks = [p for p in window if p.status == "ok"]
        if not oks:
            return []
        images = [p.pixels for p in oks if p.pixels is not None]
        return embedder.preprocess_tensors(images, mixed)  # type: ignore[arg-type]


def _cpu_fallback(p: Prepared, policy: DecodePolicy) -> None:
    d = decode_image(p.jpeg or b"", p.item.uri, policy)
    if d.image is None:
        p.status, p.error, p.width, p.height = d.status, d.error, None, None
    else:
        p.host = np.array(d.image)  # copied to the device next
        p.width, p.height, p.frames = d.width, d.height, d.frames


def prepared_stream(items: Iterable[SourceItem], embedder: Embedder,
                    read: Callable[[str], bytes], policy: DecodePolicy, tensor_path: bool,
                    batch_size: int, workers: int | None = None, read_processes: int = 0,
                    cpu_share: float | None = 0.0) -> Iterator[Prepared]:
    """Inputs read (and, on the PIL path, decoded and preprocessed) ahead, in input order."""
    if tensor_path:
        from .readahead import read_chunk

        specs = embedder.crop_specs
        # a daemonic process (a Dask worker) may not start children: it reads in threads
        if read_processes > 0 and not multiprocessing.current_process().daemon:
            from .readahead import pool

            executor = pool(read_processes)
            lookahead, chunk = max(2 * batch_size, 16 * read_processes), 32
            control = None if cpu_share is not None else ShareControl(chunk, lookahead // chunk)
            reads = _read_ahead(items, lambda b: executor.submit(
                read_chunk, b, read, policy, specs,
                control.share if control is not None else cpu_share), lookahead, chunk,
                control.observe if control is not None else None)
            yield from (_from_read(i, r) for i, r in reads)
            return
        # auto: 0 with reader threads, whose decodes would hold the interpreter lock
        cpu_share = cpu_share or 0.0
        # these readers only read and parse headers: a few threads keep up, and more only
        # contend for the GIL with the GPU staging thread (H100: 2 beat 4, 8 and 16)
        workers = workers or min(2, os.cpu_count() or 2)

        def chunk_fn(block: list[SourceItem]) -> list[Prepared]:
            return [_from_read(i, r) for i, r in zip(
                block, read_chunk(block, read, policy, specs, cpu_share), strict=True)]
    else:
        workers = workers or min(8, os.cpu_count() or 2)

        def chunk_fn(block: list[SourceItem]) -> list[Prepared]:
            return [prepare(i, read, embedder, policy) for i in block]
    with ThreadPoolExecutor(workers, thread_name_prefix="clipvec-read") as threads:
        reads = _read_ahead(items, lambda b: threads.submit(chunk_fn, b),
                            max(2 * batch_size, 4 * workers), chunk=8)
        yield from (p for _, p in reads)


def _read_ahead(items: Iterable[SourceItem],
                submit: Callable[[list[SourceItem]], Future[list[Any]]], lookahead: int,
                chunk: int, on_take: Callable[[bool], None] | None = None,
                ) -> Iterator[tuple[SourceItem, Any]]:
    """(item, result) in input order, about ``lookahead`` items in flight.

    Items are submitted in chunks, so that per-future overhead (and the GIL it
    takes) is paid once per chunk rather than once per image. ``on_take`` hears, for
    each chunk taken, whether it had to be waited for.
    """
    pending: deque[tuple[list[SourceItem], Future[list[Any]]]] = deque()
    it = iter(items)
    try:
        while True:
            while len(pending) * chunk < lookahead:
                block = list(islice(it, chunk))
                if not block:
                    break
                pending.append((block, submit(block)))
            if not pending:
                return
            block, future = pending.popleft()
            if on_take is not None:
                on_take(not future.done())
            yield from zip(block, future.result(), strict=True)
    finally:
        for _, f in pending:
            f.cancel()


# tensor path: the most full-size pixels one window brings to the device (decoded uint8,
# 1.6 GB): 256 web images are ~50 M; camera photos make windows of ~40 12-MP images
WINDOW_PIXELS = 1 << 29


def _windows(prepared: Iterable[Prepared], batch_size: int,
             max_pixels: int | None = None) -> Iterator[list[Prepared]]:
    """Runs of rows holding ``batch_size`` ok images (failures ride along in order), or
    fewer once the images to decode on the device hold ``max_pixels``."""
    window: list[Prepared] = []
    ok = pixels = 0
    for p in prepared:
        window.append(p)
        ok += p.status == "ok"
        if max_pixels is not None and p.status == "ok" and p.crops is None:
            pixels += (p.width or 0) * (p.height or 0)
        if ok >= batch_size or (max_pixels is not None and pixels >= max_pixels):
            yield window
            window, ok, pixels = [], 0, 0
    if window:
        yield window


_DONE = object()


def _background(gen: Iterator[Any], depth: int, name: str = "clipvec-stage") -> Iterator[Any]:
    """Run a generator in a thread, ``depth`` items ahead of the consumer.

    When the consumer stops early, the thread stops and closes ``gen`` (so stages
    nested inside it stop too).
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for x in gen:
                while not stop.is_set():
                    try:
                        q.put((x, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((_DONE, e))
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    try:
        while True:
            x, err = q.get()
            if x is _DONE:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
