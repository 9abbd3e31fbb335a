"""A real GPU for ``fast_upstream.py --accelerator gpu``: the batching of the simulated
accelerator, with each batch paid for by an encoder's forward pass on CUDA.

The encoder has bge-m3's shape (XLM-RoBERTa large: 24 layers, width 1024, 16 heads, 4096 wide
feed-forward, 250,002-token vocabulary, inputs cut at 512 tokens) in half precision, and
batches are formed as TEI forms them: every queued request that fits in ``max_batch_tokens``
padded tokens. A GPU host without a model hub has no weights to load, so the weights are random:
what a batch costs (its tokens and padding, the kernels, the memory traffic) is the real
model's, and the answers stay ``text_vector``'s, so every row a client gets back can still be
checked against the text it sent.

Texts become token ids without a tokenizer: one id per four characters of each word, which is
about what XLM-RoBERTa's sentencepiece gives for English and Korean prose.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import torch
from simulated_accelerator import Accelerator, Mode

VOCABULARY = 250_002
MAX_TOKENS = 512
CLS, PAD, SEP = 0, 1, 2


def token_ids(item: str | list[int]) -> list[int]:
    if not isinstance(item, str):
        return [CLS, *(3 + token % (VOCABULARY - 3) for token in item[: MAX_TOKENS - 2]), SEP]
    ids = [CLS]
    for word in item.split():
        for start in range(0, len(word), 4):
            digest = hashlib.blake2b(word[start : start + 4].encode(), digest_size=4).digest()
            ids.append(3 + int.from_bytes(digest, "little") % (VOCABULARY - 3))
    return [*ids[: MAX_TOKENS - 1], SEP]


def token_count(item: str | list[int]) -> int:
    """``len(token_ids(item))`` without hashing: what batch forming needs."""
    if not isinstance(item, str):
        return min(len(item) + 2, MAX_TOKENS)
    return min(sum(-(-len(word) // 4) for word in item.split()) + 2, MAX_TOKENS)


class Encoder(torch.nn.Module):
    def __init__(self, layers: int, width: int, heads: int) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(VOCABULARY, width, padding_idx=PAD)
        self.positions = torch.nn.Embedding(MAX_TOKENS + 2, width)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.tokens(ids) + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        return torch.nn.functional.normalize(hidden[:, 0].float(), dim=-1)


class GPUAccelerator(Accelerator):
    """Batches as TEI does (queued requests up to ``max_batch_tokens``), run on the GPU; in
    ``serial`` mode one request at a time, as Ollama runs them."""

    def __init__(
        self,
        mode: Mode = "batching",
        *,
        max_batch_tokens: int = 16384,
        layers: int = 24,
        width: int = 1024,
        heads: int = 16,
        device: str | None = None,
    ) -> None:
        super().__init__(mode, fixed_ms=0.0, per_input_ms=0.0)
        self.max_batch_tokens = max_batch_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        torch.manual_seed(0)
        self.model = Encoder(layers, width, heads).to(self.device, dtype).eval()
        self.busy_seconds = 0.0
        self.tokens = 0
        self.started = time.perf_counter()

    def _next_batch(self) -> list[Any]:
        batch = [self._queue.popleft()]
        if self.mode == "serial":
            return batch
        longest = max(map(token_count, batch[0].items))
        while self._queue:
            job = self._queue[0]
            longest = max(longest, *map(token_count, job.items))
            if (sum(j.inputs for j in batch) + job.inputs) * longest > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
        return batch

    async def compute(self, items: list[Any]) -> None:
        rows = [token_ids(item) for item in items]
        started = time.perf_counter()
        await asyncio.to_thread(self._forward, rows)
        self.busy_seconds += time.perf_counter() - started
        self.tokens += sum(map(len, rows))

    def _forward(self, rows: list[list[int]]) -> None:
        longest = max(map(len, rows))
        # One launch per slice of at most max_batch_tokens padded tokens, as TEI splits batches.
        step = max(1, self.max_batch_tokens // longest)
        with torch.inference_mode():
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                ids = torch.full((len(chunk), longest), PAD, dtype=torch.long)
                for index, row in enumerate(chunk):
                    ids[index, : len(row)] = torch.tensor(row)
                ids = ids.to(self.device, non_blocking=True)
                self.model(ids, ids == PAD).cpu()

    def summary(self) -> str:
        busy = self.busy_seconds / max(time.perf_counter() - self.started, 1e-9)
        return (f"{self.batches} batches, {self.inputs} inputs, {self.tokens} tokens, "
                f"device busy {busy:.0%} of {time.perf_counter() - self.started:.0f} s")

    def warm_up(self) -> None:
        for size in (1, 8, 64, 256):
            self._forward([token_ids("warm up the kernels " * 12)] * size)
        self.started = time.perf_counter()
