"""Reading one input, for the GPU path: in reader threads, or in worker processes.

On the GPU path the CPU's share of the work per image is small (read, sha256,
JPEG header; a CPU decode only for non-JPEG files, or for a chosen share of the
JPEGs), but in threads it competes
for the interpreter lock with the thread that feeds the GPU. On many-core
machines worker processes (spawned: Lance is not fork-safe) do it instead. This
module imports neither torch nor Lance, so the workers start quickly.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .decode import DecodePolicy, decode_image
from .geometry import CropSpec, pil_crop
from .jpeg import jpeg_info
from .retry import is_transient, with_retries
from .sources import SourceItem


@dataclass(slots=True)
class Read:
    """What a worker sends back for one input: plain, picklable values without torch.
    ``shard.Prepared`` is the row it becomes (same outcome fields, plus device tensors)."""

    status: str
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    jpeg: bytes | None = None
    orientation: int = 1  # EXIF orientation of a JPEG left for the GPU
    pixels: np.ndarray | None = None  # uint8 [H, W, 3], for files decoded on the CPU
    crops: list[np.ndarray] | None = None  # or, with crop specs: uint8 [crop, crop, 3] each


def fetch(item: SourceItem, read: Callable[[str], bytes]) -> bytes | Read:
    """The input's bytes, transient errors retried; a permanent error is an io_error row.

    Exhausted transient errors raise: the shard is then retried as a whole.
    """
    try:
        return with_retries(lambda: read(item.uri))
    except Exception as e:
        if is_transient(e):
            raise
        return Read("io_error", f"{type(e).__name__}: {e}"[:300])


def read_one(item: SourceItem, read: Callable[[str], bytes], policy: DecodePolicy,
             specs: tuple[CropSpec, ...] = (), cpu: bool = False) -> Read:
    """Read, hash and classify one input; JPEGs are left for the GPU unless ``cpu``.

    A file decoded here comes back as pixels, or, given the members' crop ``specs``,
    already resized and cropped by Pillow (the upstream pixels; less to send back).
    """
    data = fetch(item, read)
    if isinstance(data, Read):
        return data
    digest = hashlib.sha256(data).hexdigest()
    info = jpeg_info(data)
    if (not cpu and info and info.components in (1, 3)
            and info.width * info.height <= policy.max_pixels):
        w, h = info.display_size
        return Read("ok", None, digest, w, h, 1, data, info.orientation)
    d = decode_image(data, item.uri, policy)
    if d.image is None:
        return Read(d.status, d.error, digest)
    if specs:
        try:
            crops = [np.asarray(pil_crop(d.image, s)) for s in specs]
        except Exception as e:  # a transform that cannot take this image
            return Read("decode_error", f"preprocess: {type(e).__name__}: {e}"[:300], digest)
        return Read("ok", None, digest, d.width, d.height, d.frames, crops=crops)
    return Read("ok", None, digest, d.width, d.height, d.frames, pixels=np.array(d.image))


def read_chunk(items: list[SourceItem], read: Callable[[str], bytes], policy: DecodePolicy,
               specs: tuple[CropSpec, ...] = (), cpu_share: float = 0.0) -> list[Read]:
    """``read_one`` over a chunk (``read`` must pickle to reach a worker process).

    With ``cpu_share`` > 0, that share of the chunk's inputs (spread evenly) is decoded
    and resized here with Pillow instead of by the GPU: reader processes have cores
    to spare while nvJPEG and the GPU's resize thread are the pipeline's limits.
    """
    return [read_one(i, read, policy, specs, cpu=cpu_share > 0 and int((k + 1) * cpu_share)
                     > int(k * cpu_share)) for k, i in enumerate(items)]


class ShareControl:
    """``runtime.cpu_decode_share=auto``: the share of JPEGs the reader processes decode
    and resize, steered so that they stay just ahead of the GPU stages.

    The consumer reports, for each chunk it takes, whether it had to wait for it. A
    chunk that was ready means the readers have time to spare: the share grows, by
    doubling until the first time they fall behind, then by one image per chunk. A
    wait means they are behind: the share halves, and further waits are ignored until
    the chunks submitted before that cut have been taken (they still carry the old
    share). Readers that fall behind for other reasons (slow reads from a bucket,
    their own start-up) bring the share down too, as they should.
    """

    def __init__(self, chunk: int, in_flight: int, start: float = 0.0) -> None:
        self.share = start
        self._step = 1.0 / chunk
        self._in_flight = in_flight  # chunks submitted ahead of the one being taken
        self._hold = 0
        self._ramping = True

    def observe(self, waited: bool) -> None:
        if self._hold > 0:
            self._hold -= 1
            if waited:
                return
        elif waited:
            if self.share > 0:
                self._ramping = False
            self.share = self.share / 2 if self.share > self._step else 0.0
            self._hold = self._in_flight
            return
        grown = max(self._step, 2 * self.share) if self._ramping else self.share + self._step
        self.share = min(1.0, grown)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def pool(processes: int) -> ProcessPoolExecutor:
    """This process's pool of ``processes`` spawned readers, created once and reused."""
    if processes not in _POOLS:
        _POOLS[processes] = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[processes]
