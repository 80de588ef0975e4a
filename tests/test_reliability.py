"""Nothing lost, nothing duplicated: odd files, flaky storage, SIGKILL, concurrent runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import fsspec
import lance
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from flows.vectorize import run
from tests.conftest import SHARED_IMAGES, job_config, make_image

ROOT = Path(__file__).resolve().parents[1]


class FlakyFileSystem(LocalFileSystem):
    """Local files behind faults: each path's first read resets the connection;
    paths with 'forbidden' are permission errors (permanent)."""

    protocol = ("flaky",)
    failures: Counter[str] = Counter()
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name):
        return f"flaky://{self._strip_protocol(name)}"

    def _open(self, path, mode="rb", **kw):
        if "r" in mode:
            if "forbidden" in path:
                raise PermissionError(13, "Permission denied", path)
            with self.lock:
                self.failures[path] += 1
                first = self.failures[path] == 1
            if first:
                raise ConnectionResetError(104, "Connection reset by peer")
        return super()._open(path, mode, **kw)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.mark.usefixtures("prefect_api")
def test_transient_errors_are_retried_permanent_ones_are_rows(image_dir, tmp_path):
    make_image(image_dir / "forbidden.png", seed=50)
    FlakyFileSystem.failures.clear()
    summary = run(job_config(f"flaky://{image_dir}", tmp_path / "o.lance"))
    df = lance.dataset(str(tmp_path / "o.lance")).to_table().to_pandas().set_index("id")
    assert len(df) == 8 and summary["ok"] == 7 and summary["failed"] == {"io_error": 1}
    bad = df.loc[f"flaky://{image_dir}/forbidden.png"]
    assert bad.status == "io_error" and "Permission" in bad.error and bad.embedding is None
    assert all(n >= 2 for p, n in FlakyFileSystem.failures.items() if "forbidden" not in p)


def _odd_folder(root: Path) -> dict[str, str]:
    """Files that break naive image code, and the status each must get."""
    expect = {}

    def put(name: str, data: bytes, status: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expect[name] = status

    put("empty.jpg", b"", "empty")
    put("page.jpg", b"<html><body>not found</body></html>", "unidentified")
    put("garbage.png", os.urandom(2048), "unidentified")
    good = make_image(root / "nested/deeper/good.jpg", (300, 200), seed=1)
    expect["nested/deeper/good.jpg"] = "ok"
    put("truncated.jpg", good.read_bytes()[:700], "truncated")
    png = make_image(root / "full.png", (200, 200), seed=2).read_bytes()
    expect["full.png"] = "ok"
    put("truncated.png", png[: len(png) // 2], "truncated")
    Image.new("L", (5000, 5000)).save(root / "bomb.png")
    expect["bomb.png"] = "too_large"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    expect["cmyk.jpg"] = "ok"
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(root / "sixteen.png")
    expect["sixteen.png"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), "blue").save(root / "rotated.jpg", exif=exif)
    expect["rotated.jpg"] = "ok"
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(root / "alpha.png")
    expect["alpha.png"] = "ok"
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green")]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    expect["anim.gif"] = "ok"
    make_image(root / "ünï cødé/写真 #1 %20 [x] ?.png", seed=3, fmt="PNG")
    expect["ünï cødé/写真 #1 %20 [x] ?.png"] = "ok"
    return expect


@pytest.mark.usefixtures("prefect_api")
def test_odd_folder_gives_one_row_each_with_the_right_outcome(tmp_path):
    root = tmp_path / "odd"
    expect = _odd_folder(root)
    summary = run(job_config(root, tmp_path / "o.lance", model="resnet18", max_pixels=10_000_000))
    df = lance.dataset(str(tmp_path / "o.lance")).to_table().to_pandas()
    got = {r.id.removeprefix(f"file://{root}/"): r for r in df.itertuples()}
    assert set(got) == set(expect) and df.id.is_unique
    for name, status in expect.items():
        assert got[name].status == status, (name, got[name].error)
        assert (got[name].embedding is None) == (status != "ok"), name
    assert (got["rotated.jpg"].width, got["rotated.jpg"].height) == (30, 60)
    assert got["anim.gif"].frames == 2
    assert summary["ok"] == sum(s == "ok" for s in expect.values())


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.skipif(not (SHARED_IMAGES / "odd").is_dir(), reason="../shared/images is absent")
def test_shared_odd_images_complete_a_run(tmp_path):
    summary = run(job_config(SHARED_IMAGES, tmp_path / "o.lance", model="resnet18"))
    n = sum(1 for p in SHARED_IMAGES.rglob("*") if p.is_file() and p.suffix.lower() in
            {".jpg", ".png", ".gif", ".tif", ".tiff", ".webp", ".mpo", ".heif", ".sgi", ".j2k"})
    assert summary["embedded"] == n and lance.dataset(str(tmp_path / "o.lance")).count_rows() == n


def _cli(args: list[str], tmp: Path, home: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp / home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "flows" / "vectorize.py"), *args],
                            env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _images(root: Path, n: int) -> None:
    for i in range(n):
        make_image(root / f"d{i % 3}" / f"img{i:03d}.jpg", (120, 90), seed=i)


def test_sigkill_mid_run_then_rerun_leaves_one_ok_row_per_image(tmp_path):
    src, sink = tmp_path / "src", tmp_path / "out.lance"
    _images(src, 48)
    args = [f"source.uri={src}", f"sink.uri={sink}", "model=resnet18",
            "model.members.0.pretrained=random", "runtime.device=cpu", "source.shard_size=4",
            "runtime.batch_size=4"]
    p = _cli(args, tmp_path, "p1")
    staging = sink / "_clipvec_staging"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if staging.exists() and len(list(staging.glob("*/shard-*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stdout.read()
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    finished = len(list(staging.glob("*/shard-*.json")))
    assert finished >= 2
    assert not (sink / "_versions").exists() or lance.dataset(str(sink)).count_rows() == 0

    p2 = _cli(args, tmp_path, "p2")
    out, _ = p2.communicate(timeout=600)
    assert p2.returncode == 0, out[-3000:]
    assert f"resumed {finished} shard(s)" in out
    df = lance.dataset(str(sink)).to_table().to_pandas()
    assert len(df) == 48 and df.id.is_unique and set(df.status) == {"ok"}
    assert lance.dataset(str(sink)).version == 1


def test_two_runs_on_one_sink_at_once(tmp_path):
    src, sink = tmp_path / "src", tmp_path / "out.lance"
    _images(src, 24)
    args = [f"source.uri={src}", f"sink.uri={sink}", "model=resnet18",
            "model.members.0.pretrained=random", "runtime.device=cpu", "source.shard_size=6"]
    runs = [_cli(args, tmp_path, "a"), _cli(args, tmp_path, "b")]
    outs = [r.communicate(timeout=600)[0] for r in runs]
    assert all(r.returncode == 0 for r in runs), outs
    df = lance.dataset(str(sink)).to_table().to_pandas()
    assert len(df) == 24 and df.id.is_unique and set(df.status) == {"ok"}
