"""runtime.cpu_decode_share=auto: the share of JPEGs the reader processes decode is steered
by whether the GPU stages had to wait for them."""

from __future__ import annotations

import time

import pytest
import torch

from clipvec_tasks.decode import DecodePolicy
from clipvec_tasks.embedder import Embedder
from clipvec_tasks.job import JobConfig
from clipvec_tasks.members import MemberConfig, WeightsConfig, load_member
from clipvec_tasks.readahead import ShareControl
from clipvec_tasks.shard import embed_items, prepared_stream
from clipvec_tasks.sources import list_images, read_bytes
from tests.conftest import TINY, job_config, make_image


def test_share_doubles_while_the_readers_keep_up_then_grows_by_one_image():
    c = ShareControl(chunk=8, in_flight=2)
    for want in (0.125, 0.25, 0.5, 1.0, 1.0):
        c.observe(False)
        assert c.share == want
    c.observe(True)  # behind: halve, and the ramp is over
    assert c.share == 0.5
    c.observe(False)
    c.observe(False)
    assert c.share == 0.75  # one image per chunk, also while older chunks drain


def test_a_wait_halves_the_share_then_holds_while_older_chunks_drain():
    c = ShareControl(chunk=8, in_flight=3, start=0.5)
    c.observe(True)
    assert c.share == 0.25
    for _ in range(3):  # submitted before the cut: their waits say nothing new
        c.observe(True)
    assert c.share == 0.25
    c.observe(True)
    assert c.share == 0.125
    for _ in range(3):
        c.observe(True)
    c.observe(True)
    assert c.share == 0.0  # a share of one image or less goes to none
    c.observe(True)
    assert c.share == 0.0
    for _ in range(3):
        c.observe(False)
    assert c.share == 0.375


def test_auto_is_a_config_value():
    cfg = job_config("src", "sink.lance", cpu_decode_share="auto")
    assert JobConfig.from_dict(cfg).cpu_decode_share is None
    assert JobConfig.from_dict(job_config("src", "s.lance")).cpu_decode_share == 0.0


def test_readers_ahead_of_a_slow_consumer_take_on_decoding(tmp_path):
    """With reader processes far ahead (the consumer sleeps), auto moves JPEG decoding to
    them: later rows come back already resized, and every row still comes back once."""
    for i in range(640):
        make_image(tmp_path / "src" / f"{i:03d}.jpg", (80 + i % 7, 64), seed=i)
    items = sorted(list_images(str(tmp_path / "src")), key=lambda it: it.uri)
    member = load_member(MemberConfig(TINY, "random"), torch.device("cpu"), "fp32",
                         WeightsConfig(cache_dir=str(tmp_path / "cache")))
    stream = prepared_stream(items, Embedder([member]), read_bytes, DecodePolicy(),
                             tensor_path=True, batch_size=64, read_processes=2, cpu_share=None)
    resized = []
    for p in stream:
        resized.append(p.crops is not None)
        time.sleep(0.005)
    assert len(resized) == len(items)
    first, last = sum(resized[:128]), sum(resized[-128:])
    assert first == 0 and last >= 64, (first, last)  # the first chunks go before any news


@pytest.mark.parametrize("share,resized", [(0.0, 0), (0.5, 8), (1.0, 16)])
def test_stats_count_where_the_images_were_decoded(tmp_path, share, resized):
    """The shard's decode_paths: JPEGs that reached the device whole, and crops the
    readers made (a fixed share of 16 JPEGs here)."""
    for i in range(16):
        make_image(tmp_path / "src" / f"{i:02d}.jpg", (90 + i, 64), seed=i)
    items = sorted(list_images(str(tmp_path / "src")), key=lambda it: it.uri)
    member = load_member(MemberConfig(TINY, "random"), torch.device("cpu"), "fp32",
                         WeightsConfig(cache_dir=str(tmp_path / "cache")))
    stats: dict[str, int] = {}
    batches = list(embed_items(items, Embedder([member]), read_bytes, "r", batch_size=4,
                               preprocess="tensor", cpu_share=share, stats=stats))
    assert sum(b.num_rows for b in batches) == 16
    assert stats == {"device_decoded": 16 - resized, "reader_resized": resized}
