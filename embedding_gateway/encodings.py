"""Compact output types beside OpenAI's ``float`` and ``base64``, under Cohere's names.

Computed at the edge from the float32 vectors, after ``dimensions``; each row's values are
integers, written as a JSON array:

- ``ubinary``: one bit per dimension, 1 where the value is >= 0 and 0 where it is negative,
  packed eight to a byte, the first dimension in the highest bit (``numpy.packbits``); a
  vector whose size is not a multiple of 8 is padded with 0 bits. Values 0..255.
- ``binary``: the same bytes as signed integers, ``ubinary - 128``. Values -128..127.
  (These two are Cohere's definitions as its compatible servers compute them, for example
  vLLM's Cohere embed endpoint: sign bit, most significant bit first, offset by 128.)
- ``uint8``: scalar quantisation over the fixed range [-1, 1], the range of every component of
  an L2-normalised vector: ``round((clip(v, -1, 1) + 1) / 2 * 255)``, rounding half to even.
  Values 0..255.
- ``int8``: ``uint8 - 128``. Values -128..127.

Cohere does not publish the calibration ranges of its own int8 vectors; a fixed range makes
each vector independent of the others in its batch (a batch-calibrated range would not be),
so that the same text always gives the same bytes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

CompactFormat = Literal["int8", "uint8", "binary", "ubinary"]
COMPACT_FORMATS: tuple[CompactFormat, ...] = ("int8", "uint8", "binary", "ubinary")


def quantize(vectors: np.ndarray, encoding_format: CompactFormat) -> np.ndarray:
    """``vectors`` (n, d) float32 as an (n, d) or (n, ceil(d / 8)) integer array."""
    if encoding_format in ("binary", "ubinary"):
        packed = np.packbits(vectors >= 0, axis=1)
        if encoding_format == "ubinary":
            return packed
        return (packed.astype(np.int16) - 128).astype(np.int8)
    scaled = np.rint((np.clip(vectors.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0 * 255.0)
    unsigned = scaled.astype(np.uint8)
    if encoding_format == "uint8":
        return unsigned
    return (unsigned.astype(np.int16) - 128).astype(np.int8)
