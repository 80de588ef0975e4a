"""Text-to-image search over a dataset, with the dataset's own recorded model.

The query is embedded by the text tower of each CLIP member (OpenAI CLIP or
OpenCLIP) with the weights the dataset records; an image's score is the mean,
over those members, of the cosine between its slice of ``embedding`` and the
member's text vector. torchvision members have no text tower and do not take
part. Search is exact (streamed, bounded memory) unless the dataset has a
Lance vector index on ``embedding`` and every member is a CLIP model.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import read_metadata
from .errors import ClipvecError
from .members import WeightsConfig, resolve_weights
from .registry import get_spec
from .weights import WeightsRef

TEXT_FAMILIES = ("open_clip", "openai_clip")


@dataclass(frozen=True, slots=True)
class Hit:
    rank: int
    score: float
    uri: str
    id: str


def _ref(weights: dict[str, Any], spec_weights: str) -> WeightsRef:
    kind = weights.get("kind")
    if kind == "random":
        return WeightsRef("random", "random", int(weights.get("seed", 0)))
    if kind == "tag":
        return WeightsRef("tag", str(weights.get("tag") or spec_weights))
    return WeightsRef("checkpoint", str(weights["source"]))


def text_query(meta: dict[str, Any], text: str, cache: WeightsConfig) -> list[tuple[int, int,
                                                                                     np.ndarray]]:
    """(offset, dim, unit text vector) for each CLIP member of the dataset's model."""
    from .members import family_module

    out = []
    for m in meta["model"]["members"]:
        if m["family"] not in TEXT_FAMILIES:
            continue
        spec = get_spec(m["name"])
        resolved = resolve_weights(spec, _ref(m["weights"], spec.weights), cache)
        sha = m["weights"].get("sha256")
        if sha and resolved.sha256 != sha:
            raise ClipvecError(f"The weights found for {m['name']} (sha256 {resolved.sha256[:12]}) "
                               f"are not the ones the dataset was made with ({sha[:12]}).")
        vec = family_module(spec.family).build_text(spec, resolved)([text])[0].numpy()
        out.append((int(m["offset"]), int(m["dim"]), vec / np.linalg.norm(vec)))
    if not out:
        raise ClipvecError("This dataset's model has no CLIP member, so it has no text tower to "
                           "search with (torchvision backbones embed images only).")
    return out


def search(ds: Any, text: str, k: int = 10, cache: WeightsConfig | None = None,
           batch_rows: int = 65536) -> list[Hit]:
    """The ``k`` best ok rows of ``ds`` for ``text``."""
    meta = read_metadata(ds)
    if not meta:
        raise ClipvecError("This Lance dataset was not made by clipvec (no model recorded).")
    parts = text_query(meta, text, cache or WeightsConfig())
    members = meta["model"]["members"]
    if len(parts) == len(members) and _has_index(ds):
        q = np.concatenate([v for _, _, v in parts]).astype(np.float32) / len(parts)
        # refine: the index proposes 10 k candidates, exact distances rank them
        t = ds.to_table(columns=["id", "uri"], filter="status = 'ok'",
                        nearest={"column": "embedding", "q": q, "k": k, "nprobes": 32,
                                 "refine_factor": 10})
        d = t.column("_distance").to_numpy()
        return [Hit(i + 1, float(1 - s), u, x) for i, (s, u, x) in
                enumerate(zip(d, t.column("uri").to_pylist(), t.column("id").to_pylist(),
                              strict=True))]
    best: list[tuple[float, str, str]] = []
    scanner = ds.scanner(columns=["id", "uri", "embedding"], filter="status = 'ok'",
                         batch_size=batch_rows)
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        emb = batch.column("embedding")
        arr = emb.values.to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        score = np.zeros(batch.num_rows, dtype=np.float64)
        for off, dim, vec in parts:
            sl = arr[:, off:off + dim].astype(np.float64)
            score += sl @ vec / np.maximum(np.linalg.norm(sl, axis=1), 1e-12)
        score /= len(parts)
        top = np.argpartition(-score, min(k, len(score)) - 1)[:k]
        ids, uris = batch.column("id").to_pylist(), batch.column("uri").to_pylist()
        for j in top:
            item = (float(score[j]), uris[j], ids[j])
            if len(best) < k:
                heapq.heappush(best, item)
            else:
                heapq.heappushpop(best, item)
    ranked = sorted(best, reverse=True)
    return [Hit(i + 1, s, u, x) for i, (s, u, x) in enumerate(ranked)]


def _has_index(ds: Any) -> bool:
    return any("embedding" in ix.field_names for ix in ds.describe_indices())


def build_index(ds: Any, partitions: int | None = None, sub_vectors: int | None = None) -> None:
    """An IVF_PQ cosine index on ``embedding`` (for datasets of a million rows and more)."""
    import math

    n = ds.count_rows(filter="status = 'ok'")
    dim = ds.schema.field("embedding").type.list_size
    partitions = partitions or max(1, min(4096, int(math.sqrt(n))))
    sub_vectors = sub_vectors or next(s for s in (dim // 16, dim // 8, dim // 4, 1)
                                      if s >= 1 and dim % s == 0)
    ds.create_index("embedding", index_type="IVF_PQ", metric="cosine",
                    num_partitions=partitions, num_sub_vectors=sub_vectors, replace=True)


def contact_sheet(hits: list[Hit], text: str, path: str, thumb: int = 192) -> None:
    """An HTML page of the hits' thumbnails (embedded), with rank, score and uri."""
    import base64
    import html
    import io

    from .decode import decode_image
    from .sources import read_bytes

    cells = []
    for h in hits:
        try:
            img = decode_image(read_bytes(h.uri)).image
        except Exception:
            img = None
        if img is not None:
            img.thumbnail((thumb, thumb))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            src = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            tag = f'<img src="{src}" alt="">'
        else:
            tag = '<div class="missing">unreadable</div>'
        cells.append(f'<figure>{tag}<figcaption>#{h.rank} &middot; {h.score:.3f}<br>'
                     f'<small>{html.escape(h.uri)}</small></figcaption></figure>')
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(text)}</title>"
            "<style>body{font-family:sans-serif}figure{display:inline-block;width:"
            f"{thumb + 8}px;margin:6px;vertical-align:top}}small{{word-break:break-all}}"
            "</style>"
            f"<h1>{html.escape(text)}</h1>{''.join(cells)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
