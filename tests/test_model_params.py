"""Request parameters per model family: what the body carries, how images are counted (checked
against the stand-in's table, written from the same guide), and that every body we build for
OpenAI's families passes the stand-in's request rules."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lvlmva.engine import requests
from lvlmva.engine.cost import estimate_image_tokens, estimate_prompt_tokens
from lvlmva.engine.model_params import GENERIC, KNOWN, image_detail, rules_for
from lvlmva.engine.providers.wire import build_chat_kwargs
from lvlmva.engine.types import CritiqueJob, ImagePart
from lvlmva.prompts import load_prompt_set, load_spec
from lvlmva.simulation.openai_models import family_for
from lvlmva.simulation.openai_rules import validate_chat

PROMPTS = load_prompt_set("decoy-digits")
SPEC = load_spec("decoy-digits")


def png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def job(side: int = 336) -> CritiqueJob:
    images = tuple(ImagePart(n, png(side)) for n in ("original", "clusters", "overlay"))
    return CritiqueJob("j", images, ("red", "blue"), SPEC.variables(SPEC.class_names[0]))


def bodies(model: str, **sampling) -> tuple[dict, dict]:
    s = requests.Sampling(**sampling)
    critic = requests.critic_request(PROMPTS, job(), model=model, sampling=s)
    judge = requests.judge_request(
        PROMPTS, job(), "Verdict for red: yes", model=model, sampling=s, structured=True
    )
    return (
        build_chat_kwargs(critic, structured_output=True),
        build_chat_kwargs(judge, structured_output=True),
    )


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-5-mini", "gpt-5-mini"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),  # a snapshot of an exact name
        ("openai/gpt-4o", "gpt-4o"),  # litellm's provider prefix
        ("gpt-5-pro", "gpt-5-pro"),  # exact before the gpt-5 family
        ("gpt-5-codex", "gpt-5"),  # the family pattern
        ("o3-pro", "o-series"),
        ("o1-mini-2024-09-12", "o-series"),
        ("llava-v1.6", "generic"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "generic"),
    ],
)
def test_model_names_find_their_family(model, family):
    assert rules_for(model).family == family


def test_reasoning_models_get_max_completion_tokens_and_no_temperature():
    critic, judge = bodies("gpt-5-mini", reasoning_effort="low")
    for body in (critic, judge):
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 4096  # reasoning included
        assert body["reasoning_effort"] == "low"
    assert body["seed"] == 0


def test_chat_models_keep_temperature_and_take_no_reasoning_effort():
    critic, _ = bodies("gpt-4o", reasoning_effort="low")
    assert critic["temperature"] == 0.0 and critic["max_completion_tokens"] == 1024
    assert "reasoning_effort" not in critic
    assert {p["image_url"]["detail"] for p in critic["messages"][1]["content"][1:]} == {"low"}


def test_a_server_of_ones_own_gets_max_tokens_and_no_detail_unless_asked():
    critic, _ = bodies("llava-v1.6")
    assert critic["max_tokens"] == 1024 and "max_completion_tokens" not in critic
    assert all("detail" not in p["image_url"] for p in critic["messages"][1]["content"][1:])
    critic, _ = bodies("llava-v1.6", image_detail="high")
    assert {p["image_url"]["detail"] for p in critic["messages"][1]["content"][1:]} == {"high"}


def test_gpt51_takes_a_temperature_only_without_reasoning():
    assert bodies("gpt-5.1")[0]["temperature"] == 0.0  # its default effort is none
    assert "temperature" not in bodies("gpt-5.1", reasoning_effort="low")[0]


def test_fit_sends_low_detail_only_to_images_that_fit_in_512_px():
    rules = rules_for("gpt-4o")
    assert image_detail(ImagePart("a", png(336)), "fit", rules) == "low"
    assert image_detail(ImagePart("a", png(512)), "fit", rules) == "low"
    assert image_detail(ImagePart("a", png(768)), "fit", rules) == "high"
    assert image_detail(ImagePart("a", b"not a png"), "fit", rules) == "high"
    assert image_detail(ImagePart("a", png(336)), "fit", GENERIC) is None
    assert image_detail(ImagePart("a", png(336)), None, rules) is None


@pytest.mark.parametrize("model", sorted(set(KNOWN) - {"gpt-5-pro"}))
@pytest.mark.parametrize("detail", ["fit", "high", None])
def test_every_body_passes_the_stand_ins_rules(model, detail):
    family, answer_model = family_for(model, {})
    for body in bodies(model, image_detail=detail, reasoning_effort=family.default_effort):
        if family.images is None and any(
            isinstance(m["content"], list) for m in body["messages"]
        ):
            continue  # o3-mini takes no images: the Critic cannot be o3-mini
        validate_chat(body, family, answer_model)  # raises the API's 400 if a rule is broken


@pytest.mark.parametrize("model", sorted(set(KNOWN) - {"gpt-5-pro", "chatgpt-4o-latest"}))
def test_image_tokens_match_the_stand_ins_table(model):
    family, _ = family_for(model, {})
    if family.images is None:
        assert rules_for(model).images is None
        return
    for width, height in [(28, 28), (336, 336), (512, 512), (513, 512), (1024, 1024),
                          (2048, 4096), (1800, 2400), (4000, 300)]:  # fmt: skip
        for detail in ("low", "high"):
            ours = estimate_image_tokens(width, height, model=model, detail=detail)
            assert ours == family.images.tokens(width, height, detail), (width, height, detail)


def test_the_guides_worked_examples():
    assert estimate_image_tokens(1024, 1024, model="gpt-4o") == 765
    assert estimate_image_tokens(2048, 4096, model="gpt-4o") == 1105
    assert estimate_image_tokens(1024, 1024, model="gpt-4o", detail="low") == 85
    assert estimate_image_tokens(1024, 1024, model="gpt-4.1-mini") == round(1024 * 1.62)
    assert estimate_image_tokens(1800, 2400, model="gpt-5-mini") == round(1452 * 1.62)
    # gpt-4o-mini bills an image at about 33 times gpt-4o's tokens (at the same total price)
    assert estimate_image_tokens(336, 336, model="gpt-4o-mini") == 8500


def test_prompt_estimates_follow_the_model_and_the_detail():
    def critic_tokens(model: str, detail: str | None) -> int:
        s = requests.Sampling(image_detail=detail)
        return estimate_prompt_tokens(
            requests.critic_request(PROMPTS, job(), model=model, sampling=s)
        )

    assert critic_tokens("gpt-4o", "high") - critic_tokens("gpt-4o", "fit") == 3 * (255 - 85)
    assert critic_tokens("gpt-4o-mini", "fit") - critic_tokens("gpt-4o", "fit") == 3 * (
        2833 - 85
    )


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("ft:o4-mini-2025-04-16:acme::x", "o4-mini"),
        ("ft:gpt-4o-mini-2024-07-18:org::id", "gpt-4o-mini"),
        ("ft:gpt-4.1-nano-2025-04-14:my-org:custom_suffix:AbC123", "gpt-4.1-nano"),
        ("openai/ft:gpt-4o-2024-08-06:org::id", "gpt-4o"),
    ],
)
def test_a_fine_tuned_model_takes_the_rules_of_its_base(model, base):
    assert rules_for(model) == rules_for(base)


def test_a_fine_tuned_reasoning_model_gets_max_completion_tokens_and_no_temperature():
    critic, _ = bodies("ft:o4-mini-2025-04-16:acme::x")
    assert critic["max_completion_tokens"] == 4096 and "max_tokens" not in critic
    assert "temperature" not in critic


def test_temperature_none_is_not_sent():
    for body in bodies("llava-v1.6", temperature=None):
        assert "temperature" not in body
    assert bodies("llava-v1.6")[0]["temperature"] == 0.0
