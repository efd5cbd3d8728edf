"""Critic backends in a registry: settings, CLI flags, endpoint checks and provider keys."""

from __future__ import annotations

import sys
import types

import pytest

from lvlmva.cli import build_parser
from lvlmva.commands.common import critic_settings
from lvlmva.critics import (
    CRITICS,
    CriticBackend,
    CriticSettings,
    EngineLimits,
    RequestSettings,
    get_critic,
)
from lvlmva.errors import ConfigError


def _align_args(*argv: str):
    return build_parser().parse_args(["align", "--out", "unused", *argv])


def test_flat_names_are_routed_into_their_group():
    settings = CriticSettings(verdict_accuracy=0.5, budget_usd=2.0, rpm=100, sim_transport="http")
    assert settings.simulation.verdict_accuracy == 0.5
    assert settings.simulation.transport == "http"
    assert settings.limits == EngineLimits(rpm=100, budget_usd=2.0)
    assert settings.replace(verdict_accuracy=0.9).simulation.verdict_accuracy == 0.9
    assert settings.replace(verdict_accuracy=0.9).limits.budget_usd == 2.0
    with pytest.raises(TypeError, match="verdict_acuracy"):
        CriticSettings(verdict_acuracy=0.5)


def test_judge_defaults_to_the_critic_model_for_real_endpoints():
    assert CriticSettings("openai", "gpt-4o").judge_model == "gpt-4o"
    assert CriticSettings().judge_model == "simulated-judge"


def test_the_command_line_offers_every_registered_critic(monkeypatch):
    class Echo(CriticBackend):
        name = "echo"
        summary = "a test backend"

    monkeypatch.setitem(CRITICS, "echo", Echo())
    args = _align_args("--critic", "echo", "--verdict-accuracy", "0.6")
    assert critic_settings(args).kind == "echo"
    assert get_critic("echo") is CRITICS["echo"]
    with pytest.raises(ConfigError, match="unknown critic 'nope'"):
        get_critic("nope")


def test_simulated_flags_fill_the_simulation_group():
    settings = critic_settings(_align_args("--verdict-accuracy", "0.42", "--sim-latency-ms", "5"))
    assert settings.kind == "simulated"
    assert (settings.simulation.verdict_accuracy, settings.simulation.latency_ms) == (0.42, 5.0)
    with pytest.raises(ConfigError, match="--verdict-accuracy"):
        critic_settings(_align_args("--verdict-accuracy", "1.5"))


def test_litellm_leaves_each_provider_key_in_its_own_variable(monkeypatch):
    """The OpenAI key must not be handed to litellm for another provider's model: litellm reads
    ANTHROPIC_API_KEY (etc.) itself only when no api_key is passed."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-should-not-travel")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    sent: list[dict] = []

    async def acompletion(**kwargs):
        sent.append(kwargs)
        message = types.SimpleNamespace(content="ok", refusal=None)
        usage = types.SimpleNamespace(prompt_tokens=3, completion_tokens=1)
        return types.SimpleNamespace(
            choices=[types.SimpleNamespace(message=message)], usage=usage, model=kwargs["model"]
        )

    monkeypatch.setitem(sys.modules, "litellm", types.SimpleNamespace(acompletion=acompletion))
    settings = critic_settings(
        _align_args("--critic", "litellm", "--critic-model", "anthropic/claude-sonnet-4-5")
    )
    assert settings.api_key is None

    import asyncio

    from lvlmva.engine.types import ChatRequest, Message

    async def one_call():
        connection = await get_critic("litellm").connect(settings)
        request = ChatRequest(model=settings.critic_model, messages=(Message.text("user", "hi"),))
        return await connection.critic.complete(request, timeout=5)

    assert asyncio.run(one_call()).text == "ok"
    assert "api_key" not in sent[0]
    assert "sk-openai-should-not-travel" not in repr(sent[0])


async def test_python_align_checks_the_endpoint_before_any_training():
    from lvlmva.api import align
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    splits = load_dataset("decoy-digits", seed=0)
    critic = CriticSettings("openai", "m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="cannot reach"):
        await align(build_model("mlp", splits.info), splits, critic=critic, n_align=4,
                    progress=False)


def test_request_flags_fill_the_request_group_and_reach_the_engine():
    settings = critic_settings(
        _align_args(
            "--critic", "openai", "--base-url", "http://127.0.0.1:9/v1", "--critic-model",
            "gpt-5-mini", "--judge-model", "gpt-5-nano", "--max-completion-tokens", "2048",
            "--reasoning-effort", "low", "--judge-reasoning-effort", "minimal", "--detail",
            "high", "--request-timeout", "30", "--max-response-mb", "2",
        )
    )  # fmt: skip
    request = settings.request
    assert (request.max_completion_tokens, request.reasoning_effort) == (2048, "low")
    assert (request.judge_reasoning_effort, request.image_detail) == ("minimal", "high")
    assert settings.limits.request_timeout == 30 and settings.limits.max_response_bytes == 2**21
    python = CriticSettings("openai", "gpt-5-mini", reasoning_effort="low", image_detail="low")
    assert python.request.reasoning_effort == "low" and python.request.image_detail == "low"


def test_temperature_none_leaves_it_out_from_the_flag_to_the_engine():
    def temperature(*argv: str):
        return critic_settings(
            _align_args(
                "--critic", "openai", "--base-url", "http://x/v1", "--critic-model", "m", *argv
            )
        ).request.temperature

    assert temperature() == 0.0 and temperature("--temperature", "0.7") == 0.7
    assert temperature("--temperature", "none") is None
    assert CriticSettings("openai", "m", temperature=None).request.temperature is None
    with pytest.raises(ConfigError, match="temperature must be in"):
        RequestSettings(temperature=3.0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rpm", "0"], "--rpm must be positive"),
        (["--tpm", "-5"], "--tpm must be positive"),
        (["--budget-usd", "0"], "--budget-usd must be positive"),
        (["--request-timeout", "0"], "--request-timeout must be positive"),
        (["--max-completion-tokens", "0"], "--max-completion-tokens must be positive"),
        (["--temperature", "hot"], "--temperature must be a number from 0 to 2 or none"),
        (["--critic", "openai", "--base-url", "http://x/v1", "--critic-model", "gpt-4o",
          "--reasoning-effort", "high"], "neither gpt-4o nor gpt-4o is a reasoning model"),
        (["--critic", "openai", "--base-url", "http://x/v1", "--critic-model", "gpt-5-mini",
          "--reasoning-effort", "xhigh"], "gpt-5-mini takes --reasoning-effort minimal"),
    ],
)
def test_bad_request_flags_are_one_line_errors_naming_the_flag(argv, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        critic_settings(_align_args(*argv))
    assert "\n" not in str(info.value)


async def test_the_simulated_critic_keys_its_answers_by_every_setting_that_changes_them(tmp_path):
    from lvlmva.critics import open_session
    from lvlmva.engine.keys import ProviderIdentity

    identities = []
    for accuracy, transport in ((0.87, "in-process"), (1.0, "in-process"), (1.0, "http")):
        settings = CriticSettings(verdict_accuracy=accuracy, sim_transport=transport)
        session = await open_session(get_critic("simulated"), settings, "decoy-digits")
        async with session:
            identities.append(ProviderIdentity.of(session.engine.critic))
    assert identities[0] != identities[1]  # --verdict-accuracy 1.0 never reuses 0.87's answers
    assert identities[1] == identities[2]  # over HTTP: the simulation's identity, not the port's
    assert all(i.simulated and "acc=" in i.name for i in identities)
