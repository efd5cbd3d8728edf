"""Critic backends in a registry: settings, CLI flags, endpoint checks and provider keys."""

from __future__ import annotations

import sys
import types

import pytest

from lvlmva.cli import build_parser
from lvlmva.commands.common import critic_settings
from lvlmva.critics import CRITICS, CriticBackend, CriticSettings, EngineLimits, get_critic
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
