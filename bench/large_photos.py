"""A corpus of camera-sized JPEGs, for the cost of decoding large photos on the CPU.

    python bench/large_photos.py OUT [N] [WIDTH] [HEIGHT]

Each is one of ../shared/images/photos scaled to WIDTH x HEIGHT (default 4000 x 3000,
12 MP) with sensor-like noise added (so that it carries a real photo's entropy, about
3-5 MB at quality 90, rather than an upscale's smoothness), saved as a baseline JPEG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images" / "photos"


def main() -> None:
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    size = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (4000, 3000)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.asarray(sources[i % len(sources)].resize(size, Image.Resampling.BICUBIC),
                          dtype=np.float32)
        noisy = base + rng.normal(0.0, 4.0, base.shape).astype(np.float32)
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        img.save(out / f"{i:04d}.jpg", "JPEG", quality=90)


if __name__ == "__main__":
    main()
