"""Deterministic fake embeddings that identify the model that produced them.

A vector is seeded from sha256(model, item), so a test can tell from a vector alone which model
made it (`which_model`), even after a Matryoshka cut: the first k components of a vector are the
same whatever `dims` it was drawn with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

Item = str | Sequence[int]

MATCH_COSINE = 0.999


def _seed(model: str, item: Item) -> int:
    key = item if isinstance(item, str) else "ids:" + ",".join(str(int(t)) for t in item)
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def fake_vector(model: str, item: Item, dims: int) -> np.ndarray:
    """The L2-normalised float32 vector `model` gives `item` (a text or a list of token ids)."""
    raw = np.random.default_rng(_seed(model, item)).standard_normal(dims)
    return _unit(raw).astype(np.float32)


def fake_vectors(model: str, items: Sequence[Item], dims: int) -> np.ndarray:
    """`fake_vector` for each item, stacked into an (n, dims) float32 array."""
    out = np.empty((len(items), dims), dtype=np.float32)
    for row, item in enumerate(items):
        out[row] = fake_vector(model, item, dims)
    return out


def cut(vector: np.ndarray, dims: int) -> np.ndarray:
    """A Matryoshka cut: the first `dims` components, renormalised."""
    return _unit(np.asarray(vector, dtype=np.float32)[:dims]).astype(np.float32)


def which_model(
    vector: Sequence[float] | np.ndarray, item: Item, candidates: Sequence[str], dims: int
) -> str | None:
    """The candidate whose vector for `item` this is (cosine >= 0.999), or None.

    `vector` may be shorter than `dims` (cut and renormalised) or not normalised at all.
    """
    got = _unit(np.asarray(vector, dtype=np.float64))
    size = got.shape[0]
    if size == 0 or size > dims:
        return None
    for model in candidates:
        expected = _unit(fake_vector(model, item, dims)[:size].astype(np.float64))
        if float(np.dot(got, expected)) >= MATCH_COSINE:
            return model
    return None


def count_tokens(item: Item) -> int:
    """Fake tokenizer: whitespace-separated words (at least 1), or the length of a token-id list."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return len(item)


def truncate_item(item: Item, limit: int, side: str = "right") -> Item:
    """What an upstream embeds of `item` when it cuts it at `limit` tokens of the fake
    tokenizer: the first `limit` words (or ids), or the last ones when cut from the left."""
    tokens = item.split() if isinstance(item, str) else list(item)
    if len(tokens) <= limit:
        return item
    kept = tokens[:limit] if side == "right" else tokens[-limit:]
    return " ".join(kept) if isinstance(item, str) else kept
