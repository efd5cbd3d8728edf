"""The request functions: what each step sends, and that the engine sends exactly that."""

from __future__ import annotations

import json

import pytest

from lvlmva.engine.engine import Engine, EngineConfig
from lvlmva.engine.requests import (
    Sampling,
    critic_request,
    fused_request,
    judge_request,
    prompt_variables,
    reask_request,
    step_template_sha256,
)
from lvlmva.engine.types import ChatResponse, CritiqueJob, ImagePart, TextPart, Usage
from lvlmva.prompts import load_prompt_set

PROMPTS = load_prompt_set("decoy-digits")
SAMPLING = Sampling(temperature=0.3, max_tokens=300, seed=7)
JOB = CritiqueJob(
    "j",
    tuple(ImagePart(n, n.encode()) for n in ("original", "clusters", "overlay")),
    ("red", "blue"),
    {"class_name": "seven", "class_description": "a digit", "task_notes": "none"},
)


def test_prompt_variables_add_what_the_engine_knows():
    v = prompt_variables(JOB)
    assert v["n_clusters"] == "2" and v["colors"] == "red, blue"
    assert v["image_names"] == "original, clusters, overlay" and v["class_name"] == "seven"


def test_each_step_sends_what_it_should():
    critic = critic_request(PROMPTS, JOB, model="c", sampling=SAMPLING)
    assert critic.model == "c" and critic.response_schema is None
    assert (critic.temperature, critic.max_tokens, critic.seed) == (0.3, 300, 7)
    system, user = critic.messages
    assert system.role == "system" and len(system.parts) == 1
    assert [p.name for p in user.parts[1:]] == ["original", "clusters", "overlay"]
    assert "seven" in user.parts[0].text

    judge = judge_request(
        PROMPTS, JOB, "the red one is the digit", model="j", sampling=SAMPLING, structured=True
    )
    assert judge.model == "j" and judge.response_schema["properties"]["output"]["maxItems"] == 2
    assert all(isinstance(p, TextPart) for m in judge.messages for p in m.parts)
    assert "the red one is the digit" in judge.messages[1].parts[0].text
    plain = judge_request(PROMPTS, JOB, "x", model="j", sampling=SAMPLING, structured=False)
    assert plain.response_schema is None

    fused = fused_request(PROMPTS, JOB, model="c", sampling=SAMPLING, structured=True)
    assert fused.response_schema is not None and len(fused.messages[1].parts) == 4


def test_a_reask_carries_the_answer_and_the_error():
    first = judge_request(PROMPTS, JOB, "x", model="j", sampling=SAMPLING, structured=True)
    again = reask_request(first, "sure!", "invalid JSON", JOB.colors)
    assert again.messages[:2] == first.messages
    assert [m.role for m in again.messages[2:]] == ["assistant", "user"]
    assert again.messages[2].parts == (TextPart("sure!"),)
    assert "invalid JSON" in again.messages[3].parts[0].text
    assert again.response_schema is first.response_schema and again.seed == 7


def test_template_hashes_are_per_step():
    hashes = {s: step_template_sha256(PROMPTS, s) for s in ("critic", "judge", "fused")}
    assert len(set(hashes.values())) == 3
    with pytest.raises(ValueError, match="unknown step"):
        step_template_sha256(PROMPTS, "vote")


class Recorder:
    name = "recorder"
    supports_structured_output = True

    def __init__(self) -> None:
        self.requests = []

    async def complete(self, request, *, timeout):
        self.requests.append(request)
        verdicts = [{"color": "red", "verdict": "yes"}, {"color": "blue", "verdict": "no"}]
        text = "critique" if len(self.requests) == 1 else json.dumps({"output": verdicts})
        return ChatResponse(text, Usage(), "m")

    async def aclose(self) -> None:
        pass


async def test_the_engine_sends_exactly_these_requests():
    provider = Recorder()
    config = EngineConfig(
        critic_model="c",
        judge_model="j",
        prompts=PROMPTS,
        temperature=0.3,
        max_tokens=300,
        seed=7,
        progress=False,
    )
    engine = Engine(provider, None, config)
    [result] = [r async for r in engine.run([JOB])]
    assert result.ok and result.verdicts == {"red": True, "blue": False}
    assert provider.requests == [
        critic_request(PROMPTS, JOB, model="c", sampling=SAMPLING),
        judge_request(PROMPTS, JOB, "critique", model="j", sampling=SAMPLING, structured=True),
    ]
    await engine.aclose()


def test_the_render_memo_never_returns_another_jobs_text():
    from lvlmva.engine.requests import render

    template = PROMPTS.critic_user
    base = prompt_variables(JOB)
    for name in sorted(template.variables):
        changed = {**base, name: base[name] + " (changed)"}
        assert render(template, changed) == template.render(changed)
        assert render(template, base) == template.render(base)
    extra = {**base, "unused": "anything"}  # a variable the template does not use
    assert render(template, extra) == template.render(base)
    with pytest.raises(Exception, match="needs the variable"):
        render(template, {})
