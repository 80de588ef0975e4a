"""Runtime choices made by device: batch and shard sizes, and their validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.job import JobConfig
from clipvec_tasks.runtime import resolve_batch_size, resolve_shard_size


def _cfg(shard_size, batch_size) -> dict:
    return {"source": {"uri": "x", "shard_size": shard_size}, "sink": {"uri": "y"},
            "model": {"members": [{"name": "open_clip_vit_b32"}]},
            "runtime": {"batch_size": batch_size}}


def test_auto_sizes_follow_the_device():
    job = JobConfig.from_dict(_cfg("auto", None))
    assert job.shard_size is None and job.batch_size is None
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert (resolve_batch_size(None, cpu), resolve_batch_size(None, gpu)) == (32, 256)
    assert (resolve_shard_size(None, cpu), resolve_shard_size(None, gpu)) == (1000, 10000)
    job = JobConfig.from_dict(_cfg(64, "8"))
    assert (job.shard_size, job.batch_size) == (64, 8)
    assert resolve_batch_size(8, gpu) == 8 and resolve_shard_size(64, gpu) == 64


@pytest.mark.parametrize("bad", [0, -3, "many"])
def test_sizes_must_be_auto_or_positive(bad):
    with pytest.raises(ClipvecError, match="at least 1"):
        JobConfig.from_dict(_cfg(bad, 4))
    with pytest.raises(ClipvecError, match="runtime.batch_size"):
        JobConfig.from_dict(_cfg(4, bad))


def test_bf16_on_a_cpu_without_native_bf16_warns_that_fp32_is_faster(monkeypatch):
    import warnings

    from clipvec_tasks import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_warned_bf16", False)
    with pytest.warns(UserWarning, match="without AVX-512 BF16 or AMX") as told:
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
    assert len(told) == 1  # once per process
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_warned_bf16", False)  # a fresh process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
        assert runtime.resolve_precision("auto", cpu) == "fp32"  # auto never picks bf16 on CPU
        assert runtime.resolve_precision("bf16", torch.device("cuda")) == "bf16"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's CPU flags")
def test_cpu_bf16_probe_agrees_with_the_cpu_flags():
    from clipvec_tasks import runtime

    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert runtime.cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
