"""One contract for inputs longer than the model takes, whatever serves the model.

Per model (``truncation`` in its config) and per request (``"truncate"`` in the body: true or
false, or Cohere's ``"END"`` / ``"NONE"``), an over-long input is either

- **refused**: the request fails with a 400 that names the input's index, its length in tokens
  (where the upstream reports it) and the model's limit; or
- **truncated** by the upstream at the model's limit, keeping the start of the text (vLLM
  ``truncate_prompt_tokens: -1``, TEI ``truncate: true`` on ``/embed``, Ollama
  ``truncate: true``), and the response names the inputs that were cut: the header
  ``X-Truncated-Inputs`` (their indices, comma-separated) and the field ``truncated_inputs``
  (a list, present whenever truncation was asked for), which OpenAI's clients ignore.

Only the upstream's tokenizer knows a text's length, so the gateway asks it: every call goes
out with truncation off, and an upstream that refuses a call as too long (vLLM's 400, TEI's
422/413, Ollama's 400) has the call split in halves until the inputs it refuses stand alone.
The others are embedded as they are; each one refused alone is the over-long one, and is then
refused with its index, or sent again with truncation on. A batch without an over-long input
costs nothing more; one with k of them costs about 2 k log2(n) small extra calls.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidRequest, UpstreamRejected

TRUNCATE_VALUES = {True: True, False: False, "END": True, "NONE": False}
HEADER = "X-Truncated-Inputs"


class InputTooLong(UpstreamRejected):
    """The upstream refused a call because an input in it is longer than the model takes."""

    code = "input_too_long"

    def __init__(self, message: str, *, status: int, length: int | None = None,
                 limit: int | None = None) -> None:
        super().__init__(message, status=status)
        self.length = length
        self.limit = limit


# what each upstream says of an over-long input, and where its numbers are
_TOO_LONG = (
    # vLLM: "This model's maximum context length is 512 tokens. However, you requested 600
    # tokens in the input for embedding generation. Please reduce the length of the input."
    re.compile(r"maximum context length is (?P<limit>\d+) tokens\. However, you requested "
               r"(?P<length>\d+) tokens"),
    # TEI: "Input validation error: `inputs` must have less than 512 tokens. Given: 600"
    re.compile(r"must have less than (?P<limit>\d+) tokens\. Given: (?P<length>\d+)"),
    # Ollama: "the input length exceeds the context length" (runner), "input exceeds maximum
    # context length" (server): no numbers
    re.compile(r"input length exceeds the context length|input exceeds maximum context length"),
)


def too_long(status: int, message: str) -> InputTooLong | None:
    """The upstream's refusal of an over-long input, read from its error, or None."""
    for pattern in _TOO_LONG:
        found = pattern.search(message)
        if found is not None:
            numbers = {k: int(v) for k, v in found.groupdict().items() if v is not None}
            return InputTooLong(message, status=status, **numbers)
    return None


def parse_truncate(value: Any) -> bool | None:
    """The request's ``truncate``, or None when absent (the model's setting applies)."""
    if value is None:
        return None
    if isinstance(value, bool | str) and value in TRUNCATE_VALUES:
        return TRUNCATE_VALUES[value]
    raise InvalidRequest(
        f"'truncate' must be true or false (or \"END\" / \"NONE\"), got {value!r:.60}",
        param="truncate",
    )


def refusal(error: InputTooLong, *, index: int, model: str, limit: int | None) -> InvalidRequest:
    """The client's 400 for input ``index`` that the upstream refused as too long."""
    limit = limit or error.limit
    length = (f"is {error.length} tokens long" if error.length is not None
              else "is longer than the model takes")
    most = f" at most {limit} tokens" if limit else " fewer tokens"
    return InvalidRequest(
        f"'input[{index}]' {length}; model {model!r} takes{most}. Shorten it, or send "
        "\"truncate\": true to have it cut at the limit. Upstream: " + error.message,
        param="input", code="input_too_long",
    )


def truncated_header(indices: list[int]) -> dict[str, str]:
    return {HEADER: ",".join(map(str, indices))}
