"""Cache keys: the content address of a request, as a pure function of what determines its
answer.

`request_key(step, provider, request, template_sha256, schema_sha256)` is a SHA-256 over the
step, the provider's identity (who answers: an endpoint URL, or the settings of a simulation),
the model, the prompt templates' hash, the rendered text of every message (with its role), the
image hashes, the request parameters (temperature, output budget, seed, reasoning effort, image
detail, structured output; token log-probabilities when asked for) and the verdict schema's
hash, so a changed prompt, image, setting or endpoint is a miss and a rerun after a crash pays
only for what was not answered yet. The same key names a request wherever it is sent (online
or in a batch file, where it is the natural `custom_id`).

Bump `KEY_VERSION` when the derivation or the meaning of a cached entry changes (3: the
endpoint identity and the reasoning and image-detail parameters joined the key).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lvlmva.engine.types import ChatRequest, Provider, TextPart
from lvlmva.engine.validation import verdict_schema

__all__ = [
    "KEY_VERSION",
    "SIMULATED_PREFIX",
    "ProviderIdentity",
    "cache_key",
    "canonical_sha256",
    "endpoint_identity",
    "request_key",
    "schema_sha256",
    "template_sha256",
]

KEY_VERSION = 3
SIMULATED_PREFIX = "simulated"  # identities of simulations start with it

_HEADER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # a list: fixed order
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ProviderIdentity:
    """Who answers a request, as far as the cache is concerned: two providers with the same
    identity give interchangeable answers. An HTTP provider's identity is its endpoint
    (`endpoint_identity`), a simulation's a string of every setting that changes its answers,
    starting with "simulated" (`simulated` is then True: `lvlmva cache stats` counts those
    answers apart)."""

    name: str

    @property
    def simulated(self) -> bool:
        return self.name.startswith(SIMULATED_PREFIX)

    @classmethod
    def of(cls, provider: Provider) -> ProviderIdentity:
        """The provider's `identity` (a `ProviderIdentity` or a string) when it has one, else
        its `name`."""
        identity = getattr(provider, "identity", None)
        if isinstance(identity, ProviderIdentity):
            return identity
        if isinstance(identity, str) and identity:
            return cls(identity)
        return cls(provider.name)


def endpoint_identity(base_url: str) -> ProviderIdentity:
    """The identity of an HTTP endpoint: its base URL with the scheme and host lower-cased,
    default ports, trailing slashes, credentials, queries and fragments dropped."""
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return ProviderIdentity(urlunsplit((parts.scheme.lower(), netloc, path, "", "")))


def canonical_sha256(value: Any) -> str:
    """SHA-256 of the canonical JSON of `value` (sorted keys, no whitespace)."""
    return hashlib.sha256(_CANONICAL.encode(value).encode("utf-8")).hexdigest()


def cache_key(
    *,
    provider: str,
    model: str,
    template_sha256: str,
    text: str | Iterable[str],
    image_sha256s: Iterable[str],
    params: Mapping[str, Any],
    schema_sha256: str | None,
) -> str:
    """SHA-256 over the parts of a request.

    `text` is the rendered prompt (a string, or the texts of its messages in order); `params`
    the sampling parameters. The short parts go into a JSON header (a list in a fixed order,
    the params sorted by name) that also records the byte length of every text; the texts
    follow as raw UTF-8, so they are hashed without being JSON-escaped (that escaping was most
    of the cost)."""
    texts = [text.encode("utf-8")] if isinstance(text, str) else [t.encode("utf-8") for t in text]
    header = [
        KEY_VERSION,
        provider,
        model,
        template_sha256,
        sorted(params.items()),
        list(image_sha256s),
        schema_sha256,
        isinstance(text, str),
        [len(t) for t in texts],
    ]
    digest = hashlib.sha256(_HEADER.encode(header).encode("utf-8"))
    for t in texts:
        digest.update(t)
    return digest.hexdigest()


def request_key(
    step: str,
    provider: ProviderIdentity,
    request: ChatRequest,
    template_sha256: str,
    schema_sha256: str | None = None,
) -> str:
    """The cache key of `request` sent as `step` ("critic", "judge" or "fused") to
    `provider`; `schema_sha256` is the verdict schema's hash for the steps that give verdicts
    (whether or not the schema is sent: `structured_output` records that)."""
    texts: list[str] = []
    images: list[str] = []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                texts.append(f"{message.role}:{part.text}")
            else:
                images.append(part.sha256)
    return cache_key(
        provider=provider.name,
        model=request.model,
        template_sha256=template_sha256,
        text=texts,
        image_sha256s=images,
        params={
            "step": step,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "structured_output": request.response_schema is not None,
            "reasoning_effort": request.reasoning_effort,
            "image_detail": request.image_detail,
            # only when asked for, so that the keys of earlier runs stay valid
            **({} if request.top_logprobs is None else {"top_logprobs": request.top_logprobs}),
        },
        schema_sha256=schema_sha256,
    )


def template_sha256(system_sha256: str, user_sha256: str) -> str:
    """The hash of a step's two templates (system, user), from their own hashes."""
    return canonical_sha256([system_sha256, user_sha256])


@functools.lru_cache(maxsize=1024)
def schema_sha256(colors: tuple[str, ...]) -> str:
    """The hash of the verdict schema for `colors` (computed once per colour set)."""
    return canonical_sha256(verdict_schema(colors))
