"""What a cached vector is keyed by: the model's fingerprint, the options that change a vector,
and the exact input.

The fingerprint is what the upstream reported serving at its last check (backend kind, the
weights' own name, their revision or digest where it reports one) and, for a managed backend,
how its instances are launched. Request and model options are keyed by default: only those
known not to change a vector are left out (``dimensions`` and the encoding are applied after
the cache, so one entry serves every variant), so an option added later keys correctly
without this module knowing it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import attrs
import numpy as np
import orjson

from .backends.base import Backend, ServedIdentity
from .config import ModelConfig
from .schemas import EmbeddingRequest

Item = str | np.ndarray  # a text, or token ids as a uint32 array

# ModelConfig fields that say how a model is routed, scheduled or shown, not what it computes
MODEL_FIELDS_NOT_IN_VECTORS = frozenset({
    "aliases", "dimensions", "matryoshka", "max_batch", "memory_gb", "gpu", "preload",
    "pinned", "keep_alive", "cache",
})
# EmbeddingRequest fields applied after the cache, or not about the vector at all
REQUEST_FIELDS_NOT_IN_VECTORS = frozenset({
    "model", "inputs", "encoding_format", "dimensions", "user",
})
# how a managed instance is launched: another image or other arguments, other weights
LAUNCH_FIELDS = ("runtime", "image", "args", "command")

_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(EmbeddingRequest)
                        if f.name not in REQUEST_FIELDS_NOT_IN_VECTORS)


@dataclass(frozen=True)
class Fingerprint:
    digest: bytes  # of everything below; the namespace of the model's entries
    model: str  # the weights' own name, as the upstream reports it
    revision: str | None  # as the upstream reports it; None where it reports none


def _options(options: ModelConfig) -> dict[str, Any]:
    return {name: value for name, value in attrs.asdict(options).items()
            if name not in MODEL_FIELDS_NOT_IN_VECTORS}


def fingerprint(backend: Backend, served: str, identity: ServedIdentity | None,
                options: ModelConfig) -> Fingerprint | None:
    """The fingerprint of a model the upstream serves as ``served``, or ``None`` while it has
    not said what it serves under that name (``identity``, from its last check)."""
    if identity is None:
        return None
    managed = backend.config.managed
    launch = None if managed is None else [getattr(managed, f) for f in LAUNCH_FIELDS]
    raw = orjson.dumps(
        [backend.kind, served, identity.model, identity.revision, launch, _options(options)],
        option=orjson.OPT_SORT_KEYS,
    )
    return Fingerprint(hashlib.blake2b(raw, digest_size=16).digest(), identity.model,
                       identity.revision)


def namespace(model: Fingerprint, request: EmbeddingRequest, call: Hashable = None) -> str:
    """The key space of one request's inputs: its model's fingerprint, the request's own
    options, and ``call``, what its upstream calls carry beyond the inputs."""
    variant = (*(getattr(request, f) for f in _REQUEST_FIELDS), call)
    try:
        return _known_namespace(model.digest, variant)
    except TypeError:  # an option of an unhashable kind: computed each time
        return _namespace(model.digest, variant)


def _namespace(digest: bytes, variant: tuple[Any, ...]) -> str:
    raw = orjson.dumps(variant, default=repr, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(digest + raw, digest_size=16).hexdigest()


_known_namespace = functools.lru_cache(maxsize=4096)(_namespace)


def input_digest(item: Item) -> bytes:
    """A fixed-size digest of one input (text, or token ids) for shared tiers."""
    raw = (b"t:" + item.encode() if isinstance(item, str)
           else b"i:" + np.asarray(item, dtype="<u4").tobytes())
    return hashlib.blake2b(raw, digest_size=16).digest()
