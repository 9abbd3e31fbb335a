"""``decode_vectors``: every shape an upstream sends becomes one float32 matrix, or a 502."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from embedding_gateway.backends.base import decode_vectors
from embedding_gateway.errors import UpstreamFailed

ROWS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def b64(row: np.ndarray) -> str:
    return base64.b64encode(row.astype("<f4").tobytes()).decode()


@pytest.mark.parametrize("values", [
    [b64(r) for r in ROWS],
    [r.tolist() for r in ROWS],
    [b64(ROWS[0]), ROWS[1].tolist(), b64(ROWS[2])],  # mixed: the slow path, same result
])
def test_rows_become_one_float32_matrix(values: list) -> None:
    matrix = decode_vectors(values, 3, "upstream")
    assert matrix.dtype == np.float32 and matrix.shape == (3, 4)
    np.testing.assert_array_equal(matrix, ROWS)


@pytest.mark.parametrize(("values", "expected", "message"), [
    ([ROWS[0].tolist(), ROWS[1].tolist()], 3, "2 vectors for 3 inputs"),
    ([[0.1, 0.2], [0.1, 0.2, 0.3]], 2, "differing or zero length"),
    ([b64(ROWS[0]), b64(ROWS[1][:2])], 2, "differing or zero length"),
    ([[], []], 2, "differing or zero length"),
    ([], 0, "no vectors"),
    ([["a", "b"]], 1, "neither a list of numbers nor base64"),
    (["not base64!"], 1, "neither a list of numbers nor base64"),
    ([None], 1, "neither a list of numbers nor base64"),
    ([[0.1, float("nan")]], 1, "NaN or infinite"),
    ([b64(np.array([np.inf, 0.0], dtype=np.float32))], 1, "NaN or infinite"),
])
def test_broken_rows_are_an_upstream_failure(values: list, expected: int, message: str) -> None:
    with pytest.raises(UpstreamFailed, match=message):
        decode_vectors(values, expected, "upstream")
