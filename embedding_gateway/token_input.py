"""How a model reads token-id input (``input`` as arrays of integers): its ``token_ids`` setting.

OpenAI's contract defines token ids as ids of OpenAI's tokenizer (``cl100k_base`` for its
embedding models), and LangChain's ``OpenAIEmbeddings`` sends exactly that by default. Another
model's server reads ids in its own vocabulary, so forwarding them gives vectors that look
right and are not. Per model:

- ``openai`` (default): the ids are decoded with ``cl100k_base`` and the model embeds that
  text, the vectors the text itself gets;
- ``model``: the ids are the model's own and are forwarded unchanged (only to servers that
  take ids: TEI, vLLM, OpenAI; the config refuses it for Ollama);
- ``refuse``: a 400 that says to send text.
"""

from __future__ import annotations

import codecs
from dataclasses import replace

from . import cl100k
from .config import TokenIds
from .errors import InvalidRequest, UnsupportedInput
from .schemas import EmbeddingRequest

MAX_SPLIT_BYTES = 3  # a UTF-8 character is at most 4 bytes: at most 3 of it at either end


def read_token_ids(request: EmbeddingRequest, mode: TokenIds) -> EmbeddingRequest:
    """The request as its model's upstream should see it: token ids decoded to text,
    forwarded, or refused."""
    if not request.tokens or mode == "model":
        return request
    if mode == "refuse":
        raise UnsupportedInput(
            f"model {request.model!r} takes text, not token ids: send 'input' as strings. "
            "LangChain's OpenAIEmbeddings sends token ids unless it is created with "
            "check_embedding_ctx_length=False",
            param="input",
        )
    vocabulary = cl100k.vocabulary()
    texts = []
    for index, ids in enumerate(request.inputs):
        position = vocabulary.unknown(ids)
        if position is not None:
            raise InvalidRequest(
                f"'input[{index}]' has token id {int(ids[position])} at position {position}, "
                f"which is not in {cl100k.NAME} (OpenAI's tokenizer, how this model reads "
                "token ids)",
                param="input",
            )
        texts.append(utf8_text(vocabulary.decode_bytes(ids), index))
    return replace(request, inputs=texts, tokens=False)


def utf8_text(data: bytes, index: int) -> str:
    """Decoded bytes as text. A client that cuts a long text into pieces by tokens can cut a
    character in two (LangChain does, at 8191 tokens): such a piece at either end of an input
    is dropped, as neither half is text. Anything else that is not UTF-8 is refused."""
    start = 0
    while start < min(MAX_SPLIT_BYTES, len(data)) and data[start] & 0xC0 == 0x80:
        start += 1  # continuation bytes of a character begun in the previous piece
    try:
        # not final: an incomplete character at the end is held back, not an error
        return codecs.getincrementaldecoder("utf-8")().decode(data[start:])
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"'input[{index}]' is token ids whose bytes are not UTF-8 text (at byte "
            f"{start + exc.start})",
            param="input",
        ) from None

