"""Cache keys: stable, sensitive to every part (the endpoint identity included), derived as
specified below, and pinned (a change of derivation must come with a `KEY_VERSION` bump)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from lvlmva.engine.keys import (
    KEY_VERSION,
    ProviderIdentity,
    cache_key,
    canonical_sha256,
    endpoint_identity,
    request_key,
    schema_sha256,
)
from lvlmva.engine.requests import step_template_sha256
from lvlmva.engine.types import ChatRequest, ImagePart, Message, TextPart
from lvlmva.engine.validation import verdict_schema
from lvlmva.prompts import load_prompt_set

BASE = dict(
    provider="openai",
    model="gpt-4o",
    template_sha256="t" * 64,
    text=["system:be precise", "user:what is red?"],
    image_sha256s=["a" * 64, "b" * 64, "c" * 64],
    params={"temperature": 0.0, "seed": 0, "max_tokens": 512},
    schema_sha256="s" * 64,
)
COLORS = ("red", "blue", "green")
IMAGES = tuple(
    ImagePart(name, name.encode() * 3, width=4, height=4)
    for name in ("original", "clusters", "overlay")
)
CRITIC = ChatRequest(
    model="gpt-4o",
    messages=(
        Message.text("system", "Be precise. é"),
        Message("user", (TextPart("Which clusters?"), *IMAGES)),
    ),
    temperature=0.0,
    max_tokens=1024,
    seed=0,
)
JUDGE = ChatRequest(
    model="gpt-4o-mini",
    messages=(
        Message.text("system", "JSON only"),
        Message.text("user", "critique: red is the digit"),
    ),
    temperature=0.0,
    max_tokens=512,
    seed=None,
    response_schema=verdict_schema(COLORS),
)
PINNED_CRITIC = "ce6e5d760e1dcff264ddfc84cef294bff06a8203fc8047b28f7ad74bb60c6187"
PINNED_JUDGE = "4def0dff7a4601282f17048fc639482b959372811cb1b7de33a6a7b3caa962fa"


def spec_key(step, provider_name, request, template_sha, schema_sha=None) -> str:
    """The key derivation of KEY_VERSION 3 written out independently of `lvlmva.engine.keys`,
    so that the two derivations are compared, not one with itself."""
    texts, images = [], []
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                texts.append(f"{message.role}:{part.text}")
            else:
                images.append(part.sha256)
    params = {
        "step": step,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "structured_output": request.response_schema is not None,
        "reasoning_effort": request.reasoning_effort,
        "image_detail": request.image_detail,
    }
    encoded = [t.encode("utf-8") for t in texts]
    header = [
        3,
        provider_name,
        request.model,
        template_sha,
        sorted(params.items()),
        images,
        schema_sha,
        False,
        [len(t) for t in encoded],
    ]
    digest = hashlib.sha256(
        json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    )
    for t in encoded:
        digest.update(t)
    return digest.hexdigest()


def test_keys_follow_the_specified_derivation():
    openai, litellm = ProviderIdentity("https://api.openai.com/v1"), ProviderIdentity("litellm")
    schema = schema_sha256(COLORS)
    effort = dataclasses.replace(JUDGE, reasoning_effort="low", temperature=None)
    cases = [
        ("critic", openai, CRITIC, "t" * 64, None),
        ("judge", openai, JUDGE, "u" * 64, schema),
        ("judge", openai, effort, "u" * 64, schema),
        ("fused", litellm, dataclasses.replace(CRITIC, image_detail="fit"), "v" * 64, schema),
    ]
    for step, identity, request, template, schema_sha in cases:
        assert request_key(step, identity, request, template, schema_sha) == spec_key(
            step, identity.name, request, template, schema_sha
        )
    assert KEY_VERSION == 3


def test_keys_and_hashes_are_pinned():
    # Computed with KEY_VERSION 3; a changed value means existing caches would miss.
    schema = schema_sha256(COLORS)
    assert schema == "9e3db52992c4dfedf85b453d87100a317481003c84591a2ae71eb434d3c35c69"
    openai = ProviderIdentity("https://api.openai.com/v1")
    assert request_key("critic", openai, CRITIC, "t" * 64) == PINNED_CRITIC
    assert request_key("judge", openai, JUDGE, "u" * 64, schema) == PINNED_JUDGE
    prompts = load_prompt_set("decoy-digits")
    assert {step: step_template_sha256(prompts, step) for step in ("critic", "judge")} == {
        "critic": "ad9210e200eeaa0fcc0220a572d36ce0ce3cad0d63b2ec5cb2308631f0f654b9",
        "judge": "cc93abbb3413542bc2f48d86870181d355708e3a9ec1a94006da3326c47c879c",
    }


def test_the_provider_identity_is_part_of_the_key():
    class Named:
        name = "vllm-local"

    class WithIdentity:
        name = "openai"
        identity = "http://gpu-box:8000/v1"

    assert ProviderIdentity.of(Named()) == ProviderIdentity("vllm-local")
    assert ProviderIdentity.of(WithIdentity()) == ProviderIdentity("http://gpu-box:8000/v1")
    a = request_key("critic", ProviderIdentity("a"), CRITIC, "t" * 64)
    assert a != request_key("critic", ProviderIdentity("b"), CRITIC, "t" * 64)
    assert a != request_key("judge", ProviderIdentity("a"), CRITIC, "t" * 64)


def test_endpoint_identities_name_the_server_not_its_spelling():
    same = [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com/v1/",
        "https://api.openai.com:443/v1",
        "https://user:secret@api.openai.com/v1?x=1",
    ]
    assert {endpoint_identity(url) for url in same} == {ProviderIdentity("https://api.openai.com/v1")}
    assert endpoint_identity("http://127.0.0.1:8000/v1") != endpoint_identity(
        "http://127.0.0.1:8001/v1"
    )
    assert not endpoint_identity("http://localhost:8000/v1").simulated
    assert ProviderIdentity("simulated:verdict_accuracy=0.87").simulated


def test_a_local_server_and_the_real_api_never_share_an_answer():
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider

    real = OpenAICompatibleProvider(api_key="sk-x")
    local = OpenAICompatibleProvider(base_url="http://127.0.0.1:8000/v1")
    keys = {
        request_key("critic", ProviderIdentity.of(p), CRITIC, "t" * 64) for p in (real, local)
    }
    assert len(keys) == 2


def test_key_is_stable_and_ignores_param_order():
    again = dict(BASE, params={"max_tokens": 512, "seed": 0, "temperature": 0.0})
    assert cache_key(**BASE) == cache_key(**again)
    assert len(cache_key(**BASE)) == 64


@pytest.mark.parametrize(
    "field, value",
    [
        ("provider", "litellm"),
        ("model", "gpt-4o-mini"),
        ("template_sha256", "u" * 64),
        ("text", ["system:be precise", "user:what is blue?"]),
        ("text", ["user:be precise", "user:what is red?"]),
        ("image_sha256s", ["a" * 64, "c" * 64, "b" * 64]),
        ("image_sha256s", ["a" * 64, "b" * 64]),
        ("params", {"temperature": 0.7, "seed": 0, "max_tokens": 512}),
        ("params", {"temperature": None, "seed": 0, "max_tokens": 512}),  # not sent
        ("params", {"temperature": 0.0, "seed": 1, "max_tokens": 512}),
        ("params", {"temperature": 0.0, "seed": 0, "max_tokens": 513}),
        ("schema_sha256", None),
        ("schema_sha256", "x" * 64),
    ],
)
def test_key_changes_when_any_part_changes(field, value):
    assert cache_key(**{**BASE, field: value}) != cache_key(**BASE)


def test_text_boundaries_and_kinds_change_the_key():
    def key(text):
        return cache_key(**{**BASE, "text": text})

    assert key(["ab", "c"]) != key(["a", "bc"])
    assert key("abc") != key(["abc"])
    assert key(["abc"]) != key(["abc", ""])
    assert key(["é"]) != key(["e"])


def test_canonical_hash_ignores_key_order():
    assert canonical_sha256({"a": 1, "b": [1, 2]}) == canonical_sha256({"b": [1, 2], "a": 1})
    assert canonical_sha256({"a": 1}) != canonical_sha256({"a": 2})
