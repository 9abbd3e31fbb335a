"""Deterministic fake relevance scores that identify the model that produced them.

A cross-encoder's logit is drawn from sha256(model, query, document): a test can tell from a
score alone which model gave it and for which document (`which_reranker`). The score a
server reports by default is the sigmoid of that logit, as TEI (``raw_scores: false``), vLLM
(``use_activation`` unset) and Infinity (``raw_scores: false``) apply to a one-label model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

LOGIT_RANGE = 8.0
MATCH = 1e-6


def fake_logit(model: str, query: str, document: str) -> float:
    digest = hashlib.sha256(f"{model}\x00{query}\x00{document}".encode()).digest()
    unit = int.from_bytes(digest[:8], "little") / 2**64
    return (2 * unit - 1) * LOGIT_RANGE


def fake_score(model: str, query: str, document: str, *, raw: bool = False) -> float:
    logit = fake_logit(model, query, document)
    return logit if raw else 1 / (1 + math.exp(-logit))


def which_reranker(score: float, query: str, document: str,
                   candidates: Sequence[str]) -> str | None:
    """The candidate whose (sigmoid) score for this pair ``score`` is, or None."""
    for model in candidates:
        if abs(fake_score(model, query, document) - score) < MATCH:
            return model
    return None
