"""Shared fixtures: generated images, a tiny OpenCLIP model, Prefect's local test API."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

# before Prefect is imported anywhere: a private home, no analytics, patient start-up
_HOME = Path(os.environ.get("PYTEST_PREFECT_HOME", f"/tmp/clipvec-test-prefect-{os.getpid()}"))
os.environ.setdefault("PREFECT_HOME", str(_HOME))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # the GCS emulator lacks HNS

TINY = "tiny_clip"
TINY_DIM = 32
SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def _tiny_open_clip_config(tmp: Path) -> None:
    """A 64-px, 2-layer OpenCLIP ViT: the architecture of the real ones, a thousandth the size."""
    import open_clip

    from clipvec_tasks.registry import ModelSpec, register_model

    cfg = {
        "embed_dim": TINY_DIM,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }
    path = tmp / "clipvec-tiny-vit.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    register_model(ModelSpec(TINY, "open_clip", "clipvec-tiny-vit", "none", TINY_DIM, 64))


@pytest.fixture(scope="session", autouse=True)
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    _tiny_open_clip_config(tmp_path_factory.mktemp("tiny"))
    return TINY


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's ephemeral API on SQLite, once for the session, heartbeats off."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_image(path: Path, size: tuple[int, int] = (96, 72), seed: int = 0,
               fmt: str | None = None, mode: str = "RGB") -> Path:
    """A deterministic image with gradients and shapes, saved at ``path``."""
    r = random.Random(seed)
    im = Image.new("RGB", size, tuple(r.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(5):
        x, y = r.randrange(size[0]), r.randrange(size[1])
        s = r.randrange(5, max(6, min(size) // 2))
        d.rectangle([x, y, x + s, y + s], fill=tuple(r.randrange(256) for _ in range(3)))
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Seven images in nested folders, in four formats."""
    root = tmp_path / "images"
    names = ["a.jpg", "b.png", "sub/c.jpg", "sub/d.webp", "sub/deeper/e.jpeg", "sub/deeper/f.png",
             "g.gif"]
    for i, n in enumerate(names):
        make_image(root / n, (64 + 8 * i, 48 + 4 * i), seed=i)
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def job_config(source: Path | str, sink: Path | str, model: str | list[str] = TINY,
               pretrained: str = "random", **runtime) -> dict:
    """A composed-looking config dict for :func:`flows.vectorize.run`."""
    names = [model] if isinstance(model, str) else model
    return {
        "source": {"uri": str(source), "shard_size": runtime.pop("shard_size", 4),
                   "storage_options": {}},
        "sink": {"uri": str(sink), "storage_options": {}},
        "model": {"members": [{"name": n, "pretrained": pretrained, "normalize": True}
                              for n in names]},
        "runtime": {"device": "cpu", "precision": "fp32", "batch_size": 3, **runtime},
        "weights": {"cache_dir": str(Path(str(sink)).parent / "cache"), "mirror": None},
    }
