"""The OpenAI stand-in's chat-completions rules, usage, rate limits, faults and ledger, driven by
the official openai SDK (raw aiohttp where the SDK hides what is checked). Every 200 body is
validated against the SDK's pydantic types, so a shape the SDK cannot parse fails here."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.chat import ChatCompletion
from standin_support import KEY, image_part, png, serve, user

from lvlmva.engine.validation import verdict_schema
from lvlmva.simulation.answerers import FixedAnswerer
from lvlmva.simulation.openai_chat import ChatSettings
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_models import family_for
from lvlmva.simulation.openai_ratelimit import RateLimits, go_duration
from lvlmva.simulation.openai_standin import StandInConfig
from lvlmva.simulation.openai_usage import ReasoningLengths

LONG = "word " * 80  # 400 characters: 100 tokens by the stand-in's count


async def test_gpt4o_takes_max_tokens_and_temperature_zero_and_parses_strictly():
    async with serve() as s:
        raw = await s.client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=user(), max_tokens=50, temperature=0, seed=3
        )
        reply = raw.parse()
        ChatCompletion.model_validate(json.loads(raw.http_response.content))
        assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
        assert len(reply.id) == len("chatcmpl-") + 29 and reply.created == int(s.clock.now())
        assert reply.model == "gpt-4o-2024-08-06"  # an alias answers as its snapshot
        assert reply.system_fingerprint.startswith("fp_")
        choice = reply.choices[0]
        assert choice.finish_reason == "stop" and choice.message.content == "The answer is 42."
        assert choice.message.role == "assistant" and choice.message.refusal is None
        usage = reply.usage
        assert usage.prompt_tokens == 3 + 2 + 3  # message overhead, "Say hi.", reply priming
        assert usage.completion_tokens == 5 and usage.total_tokens == 13
        assert usage.prompt_tokens_details.cached_tokens == 0
        assert usage.completion_tokens_details.reasoning_tokens == 0
        assert raw.headers["x-request-id"].startswith("req_")
        assert raw.headers["openai-version"] == "2020-10-01"


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-mini", "o3", "o4-mini", "gpt-5.1"])
async def test_reasoning_models_refuse_max_tokens_with_the_documented_error(model):
    async with serve() as s:
        with pytest.raises(openai.BadRequestError) as info:
            await s.client.chat.completions.create(model=model, messages=user(), max_tokens=50)
        error = info.value
        assert error.code == "unsupported_parameter" and error.param == "max_tokens"
        assert error.type == "invalid_request_error"
        assert error.body["message"] == (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead."
        )
        reply = await s.client.chat.completions.create(
            model=model, messages=user(), max_completion_tokens=5000, reasoning_effort="low"
        )
        assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-nano", "o3", "o1"])
async def test_reasoning_models_take_only_default_sampling(model):
    async with serve() as s:
        create = s.client.chat.completions.create
        with pytest.raises(openai.BadRequestError) as info:
            await create(model=model, messages=user(), temperature=0)
        assert info.value.code == "unsupported_value" and info.value.param == "temperature"
        assert info.value.body["message"] == (
            "Unsupported value: 'temperature' does not support 0 with this model. "
            "Only the default (1) value is supported."
        )
        for kwargs, param in (
            ({"temperature": 0.2}, "temperature"),
            ({"top_p": 0.5}, "top_p"),
            ({"presence_penalty": 0.5}, "presence_penalty"),
            ({"frequency_penalty": -1}, "frequency_penalty"),
            ({"logprobs": True}, "logprobs"),
        ):
            with pytest.raises(openai.BadRequestError) as info:
                await create(model=model, messages=user(), **kwargs)
            assert info.value.param == param
        reply = await create(model=model, messages=user(), temperature=1, top_p=1)
        assert reply.choices[0].message.content is not None


async def test_reasoning_effort_values_follow_each_family():
    async with serve() as s:
        create = s.client.chat.completions.create
        # gpt-5.1 defaults to effort "none", and then takes sampling parameters ...
        assert (await create(model="gpt-5.1", messages=user(), temperature=0)).usage
        with pytest.raises(openai.BadRequestError) as info:  # ... but not while reasoning
            await create(model="gpt-5.1", messages=user(), temperature=0, reasoning_effort="low")
        assert info.value.code == "unsupported_value"
        for model, effort in (("gpt-5", "none"), ("gpt-5.1", "minimal"), ("o3", "minimal")):
            with pytest.raises(openai.BadRequestError) as info:
                await create(model=model, messages=user(), reasoning_effort=effort)
            assert info.value.code == "unsupported_value"
            assert info.value.param == "reasoning_effort"
        assert (await create(model="gpt-5", messages=user(), reasoning_effort="minimal")).usage
        with pytest.raises(openai.BadRequestError) as info:
            await create(model="gpt-4o", messages=user(), reasoning_effort="low")
        assert (
            info.value.body["message"] == "Unrecognized request argument supplied: reasoning_effort"
        )
        assert info.value.param is None and info.value.code is None
        with pytest.raises(openai.BadRequestError) as info:
            await create(model="gpt-4o", messages=user(), verbosity="low")
        assert info.value.code == "unsupported_parameter"


async def test_unknown_parameters_and_bad_values_are_refused():
    async with serve() as s:
        create = s.client.chat.completions.create
        with pytest.raises(openai.BadRequestError) as info:
            await create(model="gpt-4o", messages=user(), extra_body={"top_k": 5, "thinking": 1})
        assert (
            info.value.body["message"] == "Unrecognized request arguments supplied: thinking, top_k"
        )
        cases = (
            ({"temperature": 3}, "temperature", "decimal_above_max_value"),
            ({"n": 0}, "n", "integer_below_min_value"),
            ({"max_tokens": 100_000}, "max_tokens", "invalid_value"),
            ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_type"),
            ({"stream": True}, "stream", "not_served_by_stand_in"),
            ({"extra_body": {"temperature": "hot"}}, "temperature", "invalid_type"),
        )
        for kwargs, param, code in cases:
            with pytest.raises(openai.BadRequestError) as info:
                await create(model="gpt-4o", messages=user(), **kwargs)
            assert (info.value.param, info.value.code) == (param, code), kwargs
        with pytest.raises(openai.BadRequestError, match="at most 16384 completion tokens"):
            await create(model="gpt-4o", messages=user(), max_tokens=16385)
        status, _, body = await s.raw("POST", "/v1/chat/completions", data=b"{not json")
        assert status == 400 and "could not parse the JSON body" in body["error"]["message"]
        status, _, body = await s.raw("POST", "/v1/nothing-here", json={})
        assert status == 404 and body["error"]["message"] == "Invalid URL (POST /v1/nothing-here)"


async def test_our_simulated_names_behave_like_a_non_reasoning_model():
    async with serve() as s:
        reply = await s.client.chat.completions.create(
            model="simulated-critic", messages=user(), max_tokens=64, temperature=0
        )
        assert reply.model == "simulated-critic" and reply.choices[0].finish_reason == "stop"
        with pytest.raises(openai.NotFoundError) as info:
            await s.client.chat.completions.create(model="gpt-9-turbo", messages=user())
        assert info.value.code == "model_not_found" and info.value.status_code == 404
        assert info.value.body["message"] == (
            "The model `gpt-9-turbo` does not exist or you do not have access to it."
        )
        listed = [m.id for m in (await s.client.models.list()).data]
        assert listed[0] == "simulated" and "gpt-5" in listed and "o4-mini" in listed


async def test_a_fine_tuned_name_takes_its_bases_rules_and_an_unknown_base_is_404():
    reasoner = "ft:o4-mini-2025-04-16:my-org:critic:abc123"
    async with serve() as s:
        create = s.client.chat.completions.create
        with pytest.raises(openai.BadRequestError) as info:
            await create(model=reasoner, messages=user(), max_tokens=50)
        assert info.value.code == "unsupported_parameter" and info.value.param == "max_tokens"
        with pytest.raises(openai.BadRequestError, match="Only the default"):
            await create(model=reasoner, messages=user(), temperature=0)
        reply = await create(model=reasoner, messages=user(), max_completion_tokens=2000)
        assert reply.model == reasoner  # it answers as itself, not as its base's snapshot
        assert reply.usage.completion_tokens_details.reasoning_tokens == 1024  # o4-mini's medium
        chat = "ft:gpt-4o-mini-2024-07-18:my-org::x9:ckpt-step-200"  # empty suffix, checkpoint
        reply = await create(model=chat, messages=user(), max_tokens=20, temperature=0)
        assert reply.choices[0].finish_reason == "stop"
        for unknown in ("ft:gpt-9-turbo:my-org::abc", "ft:gpt-4o-mini", "ft:gpt-4o:org:x"):
            with pytest.raises(openai.NotFoundError) as info:
                await create(model=unknown, messages=user())
            assert info.value.code == "model_not_found", unknown


async def test_hidden_reasoning_spends_the_budget_and_can_leave_nothing_to_say():
    lengths = ReasoningLengths({"low": 100, "medium": 600, "high": 5000})
    config = StandInConfig(chat=ChatSettings(reasoning=lengths))
    async with serve(FixedAnswerer(LONG), config) as s:
        create = s.client.chat.completions.create
        empty = await create(model="gpt-5", messages=user(), max_completion_tokens=500)
        assert empty.choices[0].message.content == "" and empty.choices[0].finish_reason == "length"
        assert empty.usage.completion_tokens == 500
        assert empty.usage.completion_tokens_details.reasoning_tokens == 500
        cut = await create(model="gpt-5", messages=user(), max_completion_tokens=650)
        assert cut.choices[0].finish_reason == "length"
        assert cut.choices[0].message.content == LONG[: 50 * 4]  # 650 - 600 tokens visible
        full = await create(
            model="o3", messages=user(), max_completion_tokens=1000, reasoning_effort="low"
        )
        assert full.choices[0].message.content == LONG and full.choices[0].finish_reason == "stop"
        assert full.usage.completion_tokens == 100 + 100  # reasoning counted inside
        assert full.usage.completion_tokens_details.reasoning_tokens == 100
        plain = await create(model="gpt-4o", messages=user(), max_tokens=10)
        assert plain.choices[0].message.content == LONG[:40]
        assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 10
        two = await create(model="gpt-4o", messages=user(), n=2)
        assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 200


async def test_context_window_is_enforced():
    async with serve() as s:
        with pytest.raises(openai.BadRequestError) as info:
            await s.client.chat.completions.create(
                model="gpt-4o", messages=user("x" * 4 * 130_000), max_tokens=10
            )
        assert info.value.code == "context_length_exceeded"
        assert "maximum context length is 128000 tokens" in info.value.body["message"]


def _schema_body(schema, name="verdicts", strict=True):
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}
    return {"response_format": fmt}


async def test_strict_json_schema_is_checked_as_strict_mode_checks_it():
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    unlisted = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    nested = {
        "type": "object",
        "properties": {"x": {"type": "array", "items": {"type": "object", "properties": {}}}},
        "required": ["x"],
        "additionalProperties": False,
    }
    async with serve(FixedAnswerer('{"output": []}')) as s:
        create = s.client.chat.completions.create
        cases = (
            (
                loose,
                "In context=(), 'additionalProperties' is required to be supplied and to be false.",
            ),
            (unlisted, "including every key in properties. Missing 'b'."),
            (nested, "In context=('properties', 'x', 'items'), 'additionalProperties'"),
            ({"anyOf": [loose]}, "root schema must be an object"),
            ({**unlisted, "required": ["a", "b"], "allOf": []}, "'allOf' is not permitted"),
        )
        for schema, message in cases:
            with pytest.raises(openai.BadRequestError) as info:
                await create(model="gpt-4o", messages=user(), extra_body=_schema_body(schema))
            assert (
                info.value.code == "invalid_json_schema" and info.value.param == "response_format"
            )
            assert message in info.value.body["message"]
            assert info.value.body["message"].startswith(
                "Invalid schema for response_format 'verdicts'"
            )
        with pytest.raises(openai.BadRequestError) as info:
            await create(
                model="gpt-4o", messages=user(), extra_body=_schema_body(loose, "bad name")
            )
        assert info.value.param == "response_format.json_schema.name"
        # a schema strict mode would refuse is fine when strict is off, and ours passes strict
        await create(model="gpt-4o", messages=user(), extra_body=_schema_body(loose, strict=False))
        ours = _schema_body(verdict_schema(["red", "blue"]))
        assert (await create(model="gpt-5-mini", messages=user(), extra_body=ours)).usage
        with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
            await create(model="gpt-4o", messages=user(), response_format={"type": "json_object"})
        await create(
            model="gpt-4o", messages=user("Reply in JSON."), response_format={"type": "json_object"}
        )


async def test_message_and_image_part_shapes():
    image = png(1024, 1024)
    async with serve() as s:
        create = s.client.chat.completions.create

        async def prompt_tokens(model, detail):
            content = [{"type": "text", "text": "abcd"}, image_part(image, detail)]
            reply = await create(model=model, messages=[{"role": "user", "content": content}])
            return reply.usage.prompt_tokens - (3 + 1 + 3)

        assert await prompt_tokens("gpt-4o", "high") == 765  # 85 + 4 tiles x 170
        assert await prompt_tokens("gpt-4o", "auto") == 765
        assert await prompt_tokens("gpt-4o", "low") == 85
        assert await prompt_tokens("gpt-5", "high") == 70 + 4 * 140
        assert await prompt_tokens("gpt-4o-mini", "high") == 2833 + 4 * 5667
        assert await prompt_tokens("gpt-4.1-mini", "low") == round(1024 * 1.62)  # patches
        https = {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}
        cached = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
        bad = (
            ([image_part(image, "medium")], "messages[0].content[0].image_url.detail", "'low'"),
            ([https], "messages[0].content[0].image_url.url", "cannot fetch image URLs"),
            ([image_part(b"not a png")], "messages[0].content[0].image_url.url", "unsupported"),
            ([cached], None, "Additional properties are not allowed ('cache_control'"),
            ([{"type": "video", "video": "x"}], "messages[0].content[0].type", "'video'"),
            ([], "messages[0].content", "empty array"),
        )
        for content, param, message in bad:
            with pytest.raises(openai.BadRequestError) as info:
                await create(model="gpt-4o", messages=[{"role": "user", "content": content}])
            assert info.value.param == param and message in info.value.body["message"]
        with pytest.raises(openai.BadRequestError, match="image_url is only supported"):
            await create(
                model="o3-mini", messages=[{"role": "user", "content": [image_part(image)]}]
            )
        with pytest.raises(openai.BadRequestError) as info:  # system content takes text only
            await create(
                model="gpt-4o", messages=[{"role": "system", "content": [image_part(image)]}]
            )
        assert info.value.param == "messages[0].content[0].type"
        developer = [{"role": "developer", "content": "Be brief."}, *user()]
        assert (await create(model="gpt-5", messages=developer)).usage


def test_image_token_rules_reproduce_the_guide_examples():
    tokens = {
        name: family_for(name, {})[0].images.tokens  # type: ignore[union-attr]
        for name in ("gpt-4o", "gpt-4.1", "o1", "gpt-4.1-nano", "o4-mini", "gpt-5-mini")
    }
    assert tokens["gpt-4o"](2048, 4096, "high") == 1105  # 768 x 1536: 6 tiles
    assert tokens["gpt-4o"](4096, 8192, "low") == 85
    assert tokens["gpt-4.1"](1024, 1024, "high") == 765
    assert tokens["o1"](512, 512, "high") == 75 + 150
    assert tokens["gpt-4.1-nano"](1800, 2400, "high") == round(1452 * 2.46)  # shrunk to 1452
    assert tokens["o4-mini"](64, 64, "high") == round(4 * 1.72)
    # 4000 x 4000: shrink by sqrt(1024 * 1536 / 4000^2) = 0.3135, then to whole patches:
    # 4000 * 0.3135 / 32 = 39.2 -> 39 per side, 1,521 patches (detail changes nothing)
    assert tokens["gpt-5-mini"](4000, 4000, "low") == round(1521 * 1.62)
    assert family_for("gpt-4o-2024-11-20", {})[1] == "gpt-4o-2024-11-20"
    assert family_for("gpt-5-chat-latest", {}) is None
    assert [go_duration(x) for x in (0, 0.02, 1, 1.5, 360, 3723.5)] == [
        "0s", "20ms", "1s", "1.5s", "6m0s", "1h2m3.5s"
    ]  # fmt: skip


async def test_cached_tokens_count_a_repeated_long_prefix_in_128_token_steps():
    system = {"role": "system", "content": "rules " * 900}  # 5,400 chars: 1,350 tokens
    async with serve() as s:
        create = s.client.chat.completions.create
        first = await create(model="gpt-4o", messages=[system, *user("one")])
        second = await create(model="gpt-4o", messages=[system, *user("two")])
        other = await create(model="gpt-4.1", messages=[system, *user("two")])
        short = [{"role": "system", "content": "short"}, *user("x")]
        await create(model="gpt-4o", messages=short)
        again = await create(model="gpt-4o", messages=short)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 1024 + 2 * 128  # of 3 + 1350
    assert other.usage.prompt_tokens_details.cached_tokens == 0  # caches are per model
    assert again.usage.prompt_tokens_details.cached_tokens == 0  # under 1,024 tokens


async def test_rate_limit_headers_and_429s_follow_the_window():
    config = StandInConfig(chat=ChatSettings(limits=RateLimits(rpm=2, tpm=1000)))
    async with serve(config=config) as s:
        raw = s.client.chat.completions.with_raw_response.create
        first = await raw(model="gpt-4o", messages=user(), max_tokens=92)  # 8 + 92 tokens
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"] == "30s"
        assert first.headers["x-ratelimit-limit-tokens"] == "1000"
        assert first.headers["x-ratelimit-remaining-tokens"] == "900"
        assert first.headers["x-ratelimit-reset-tokens"] == "6s"
        await raw(model="gpt-4o", messages=user())
        with pytest.raises(openai.RateLimitError) as info:
            await s.client.chat.completions.create(model="gpt-4o", messages=user())
        error = info.value
        assert error.code == "rate_limit_exceeded" and error.type == "requests"
        assert error.response.headers["retry-after"] == "30"
        assert error.body["message"].startswith(
            "Rate limit reached for gpt-4o in organization org-standin on requests per min (RPM): "
            "Limit 2, Used 2, Requested 1. Please try again in 30s."
        )
        await s.client.chat.completions.create(model="gpt-4.1", messages=user())  # per model
        s.standin.advance(30)
        await s.client.chat.completions.create(model="gpt-4o", messages=user())
        with pytest.raises(openai.RateLimitError) as info:
            await s.client.chat.completions.create(model="gpt-4o", messages=user(), max_tokens=2000)
        assert info.value.type == "tokens" and "Request too large" in info.value.body["message"]
        assert "retry-after" not in info.value.response.headers
    assert s.standin.ledger.sync_calls == 6 and s.standin.ledger.sync_answers == 4


async def test_authentication_revoked_key_and_quota():
    config = StandInConfig(api_keys={KEY})
    async with serve(config=config, faults=Faults(revoke_key_after=2)) as s:
        status, _, body = await s.raw("GET", "/v1/models", headers={"Authorization": ""})
        assert status == 401 and body["error"]["code"] is None
        wrong = "sk-wrong-key-abcdefghijkl"
        status, _, body = await s.raw(
            "GET", "/v1/models", headers={"Authorization": f"Bearer {wrong}"}
        )
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert wrong not in body["error"]["message"] and "ijkl" in body["error"]["message"]
        for _ in range(2):
            await s.client.chat.completions.create(model="gpt-4o", messages=user())
        with pytest.raises(openai.AuthenticationError) as info:
            await s.client.chat.completions.create(model="gpt-4o", messages=user())
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await s.client.files.list()
        assert [c.status for c in s.standin.ledger.calls] == [200, 200, 401]
    async with serve(faults=Faults(quota_after=1, missing_models=frozenset({"gpt-4.1"}))) as s:
        await s.client.chat.completions.create(model="gpt-4o", messages=user())
        with pytest.raises(openai.RateLimitError) as info:
            await s.client.chat.completions.create(model="gpt-4o", messages=user())
        assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
        with pytest.raises(openai.RateLimitError, match="exceeded your current quota"):
            await s.client.batches.create(
                input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h"
            )
        s.standin.faults = s.standin.faults.updated({"quota_after": None})
        with pytest.raises(openai.NotFoundError):
            await s.client.chat.completions.create(model="gpt-4.1", messages=user())


async def test_answer_faults_truncate_filter_refuse_and_oversize():
    async with serve(FixedAnswerer("short"), faults=Faults(truncate_share=1.0)) as s:
        create = s.client.chat.completions.create
        cut = await create(model="gpt-4o", messages=user(), max_tokens=30)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 30
        assert (
            cut.choices[0].message.content.startswith("short")
            and len(cut.choices[0].message.content) == 120
        )

        def filtered(choice):
            return choice.finish_reason == "content_filter" and choice.message.content is None

        def refused(choice):
            message = choice.message
            return message.refusal and message.content is None and choice.finish_reason == "stop"

        for changes, check in (
            ({"truncate_share": 0, "content_filter_share": 1}, filtered),
            ({"content_filter_share": 0, "refusal_share": 1}, refused),
        ):
            status, _, body = await s.raw("POST", "/stand-in/faults", json=changes)
            assert status == 200 and all(body[k] == v for k, v in changes.items())
            reply = await create(model="gpt-4o", messages=user())
            assert check(reply.choices[0]), reply
        await s.raw("POST", "/stand-in/faults", json={"refusal_share": 0, "oversize_share": 1,
                                                      "oversize_bytes": 3_000_000})  # fmt: skip
        raw = await s.client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=user()
        )
        assert len(raw.http_response.content) == 3_000_000
        assert raw.parse().choices[0].message.content == "short"
        status, _, body = await s.raw("POST", "/stand-in/faults", json={"nonsense": 1})
        assert status == 400 and "unknown fault settings" in body["error"]["message"]
        await s.raw("POST", "/stand-in/faults", json={"oversize_share": 0, "rate_500": 1})
        with pytest.raises(openai.InternalServerError):
            await create(model="gpt-4o", messages=user())
        await s.raw(
            "POST", "/stand-in/faults", json={"rate_500": 0, "rate_429": 1, "retry_after_s": 4}
        )
        with pytest.raises(openai.RateLimitError) as info:
            await create(model="gpt-4o", messages=user())
        assert info.value.response.headers["retry-after"] == "4"


async def test_ledger_counts_calls_repeats_and_tokens_per_model():
    async with serve() as s:
        create = s.client.chat.completions.create
        replies = [await create(model="gpt-4o", messages=user(), max_tokens=20) for _ in range(2)]
        replies.append(
            await create(model="gpt-5", messages=user("other"), max_completion_tokens=5000)
        )
        with pytest.raises(openai.BadRequestError):
            await create(model="gpt-5", messages=user(), max_tokens=5)
        ledger = s.standin.ledger
        assert ledger.sync_calls == 4 and ledger.sync_answers == 3
        assert list(ledger.answered_more_than_once().values()) == [2]
        totals = ledger.by_model("sync")
        assert totals["gpt-4o"].requests == 2
        assert totals["gpt-4o"].prompt_tokens == sum(r.usage.prompt_tokens for r in replies[:2])
        assert totals["gpt-5"].completion_tokens == replies[2].usage.completion_tokens
        assert totals["gpt-5"].reasoning_tokens == 1024  # the default "medium" length
        status, _, body = await s.raw("GET", "/stand-in/ledger?calls=0")
        assert status == 200 and "calls" not in body and body["sync_calls"] == 4
        status, _, stats = await s.raw("GET", "/sim/stats?per_hash=0")
        assert stats["requests"] == 4 and stats["by_status"] == {"200": 3, "400": 1}
        assert stats["duplicate_answers"] == 1
        await s.raw("POST", "/stand-in/reset")
        assert s.standin.ledger.sync_calls == 0
        status, _, body = await s.raw("POST", "/stand-in/advance", json={"seconds": 5})
        assert status == 200 and body["now"] == s.clock.now()
