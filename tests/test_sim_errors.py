"""The simulated LVLM's error models and repeated samples (lvlmva.simulation.error_models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvlmva.critics import CriticSettings, SimulationSettings, get_critic
from lvlmva.engine.types import ChatRequest, ImagePart, Message, TextPart
from lvlmva.errors import ConfigError
from lvlmva.simulation import DictOracle, SimulatedLVLM
from lvlmva.simulation import ambiguity_reference as reference
from lvlmva.simulation.error_models import (
    AmbiguityErrors,
    ClusterTraits,
    IndependentErrors,
    build_error_model,
    is_wrong,
)
from lvlmva.vision.render import PALETTE, render_critic_images


@pytest.mark.parametrize("systematic", [0.0, 0.5, 1.0])
def test_each_sample_is_wrong_with_p_and_two_samples_share_the_systematic_part(systematic):
    p, n = 0.2, 6000
    first = [is_wrong(p, systematic, (0, "img", i), "a") for i in range(n)]
    second = [is_wrong(p, systematic, (0, "img", i), "b") for i in range(n)]
    assert abs(sum(first) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    both = sum(a and b for a, b in zip(first, second, strict=True)) / n
    stuck = systematic * p
    expected = stuck + (1 - stuck) * ((p - stuck) / (1 - stuck)) ** 2
    assert abs(both - expected) < 0.015
    assert first == [is_wrong(p, systematic, (0, "img", i), "a") for i in range(n)]


def test_independent_errors_ignore_the_traits():
    model = IndependentErrors(0.87, 0.7)
    for mix, size in ((0.0, 0.5), (0.9, 0.001)):
        assert model.error_probability(ClusterTraits(True, mix, size)) == pytest.approx(0.13)
        assert model.error_probability(ClusterTraits(False, mix, size)) == pytest.approx(0.3)


def _reference_mean(model: AmbiguityErrors, cells, spurious: bool) -> float:
    total = sum(n for *_, n in cells)
    return sum(
        n * model.error_probability(ClusterTraits(spurious, mix, 10.0**log_size))
        for mix, log_size, n in cells
    ) / total


@pytest.mark.parametrize("accuracy", [0.87, 0.46, 0.99])
def test_ambiguity_errors_meet_the_accuracy_on_the_reference_population(accuracy):
    model = AmbiguityErrors(accuracy, 0.9)
    assert _reference_mean(model, reference.SPURIOUS, True) == pytest.approx(1 - accuracy, abs=1e-6)
    assert _reference_mean(model, reference.OTHER, False) == pytest.approx(0.1, abs=1e-6)


def test_ambiguity_errors_grow_with_mixedness_and_smallness_and_respect_the_bounds():
    model = AmbiguityErrors(0.87, 0.87)
    p = model.error_probability
    assert p(ClusterTraits(True, 0.0, 0.02)) < p(ClusterTraits(True, 0.5, 0.02))
    assert p(ClusterTraits(True, 0.5, 0.02)) < p(ClusterTraits(True, 0.9, 0.02))
    assert p(ClusterTraits(True, 0.3, 0.1)) < p(ClusterTraits(True, 0.3, 0.005))
    perfect, inverted = AmbiguityErrors(1.0, 1.0), AmbiguityErrors(0.0, 0.0)
    assert perfect.error_probability(ClusterTraits(True, 0.9, 0.001)) == 0.0
    assert inverted.error_probability(ClusterTraits(False, 0.0, 0.5)) == 1.0
    with pytest.raises(ConfigError, match="unknown simulated error model"):
        build_error_model("clumpy", 0.9, 0.9)


def _sample(seed: int = 0):
    """A 28 px image, a cluster map with one cluster on a corner square and one mixed one."""
    rng = np.random.default_rng(seed)
    image = rng.random((1, 28, 28)) * 0.3
    labels = np.full((28, 28), -1)
    labels[8:20, 8:20] = 0  # relevant, away from the square
    labels[0:4, 0:4] = 1  # exactly the square
    labels[0:4, 4:12] = 2  # mostly off the square: touches it along one edge
    labels[0:8, 0:1] = 2
    labels[20:26, 20:26] = 3
    mask = np.zeros((28, 28), dtype=bool)
    mask[0:4, 0:4] = True
    mask[0:8, 0:1] = True
    return render_critic_images(image, labels), mask


def _critic_request(rendered, colors) -> ChatRequest:
    text = f"The map contains {len(colors)} clusters, in these colours: {', '.join(colors)}."
    images = tuple(
        ImagePart(name, data)
        for name, data in (
            ("original", rendered.original),
            ("clusters", rendered.clusters),
            ("overlay", rendered.overlay),
        )
    )
    return ChatRequest(model="sim", messages=(Message("user", (TextPart(text), *images)),))


async def test_a_reordered_question_keeps_systematic_errors_and_redraws_the_rest():
    samples = [_sample(seed) for seed in range(30)]
    oracle = DictOracle({r.original: m for r, m in samples})
    changed = {}
    for systematic in (0.0, 1.0):
        sim = SimulatedLVLM(
            oracle=oracle, palette=PALETTE, verdict_accuracy=0.6, systematic=systematic
        )
        differ = 0
        for rendered, _ in samples:
            colors = list(rendered.colors)
            a = await sim.complete(_critic_request(rendered, colors), timeout=5)
            b = await sim.complete(_critic_request(rendered, colors[::-1]), timeout=5)
            again = await sim.complete(_critic_request(rendered, colors), timeout=5)
            assert again.text == a.text  # the same request, the same answer
            verdict_a = sorted(line for line in a.text.splitlines() if "Verdict" in line)
            verdict_b = sorted(line for line in b.text.splitlines() if "Verdict" in line)
            differ += verdict_a != verdict_b
        changed[systematic] = differ
    assert changed[1.0] == 0
    assert changed[0.0] >= 5


def test_the_ambiguity_model_errs_more_on_the_mixed_cluster():
    samples = [_sample(seed) for seed in range(200)]
    oracle = DictOracle({r.original: m for r, m in samples})
    sim = SimulatedLVLM(oracle=oracle, palette=PALETTE, verdict_accuracy=0.87,
                        error_model="ambiguity")  # fmt: skip
    wrong = {"pure": 0, "mixed": 0}
    for rendered, _ in samples:
        found = {v.color: v for v in sim.critic_verdicts(rendered.original, rendered.clusters)}
        pure, mixed = found[list(PALETTE)[1]], found[list(PALETTE)[2]]
        assert pure.truly_spurious and mixed.truly_spurious
        wrong["pure"] += pure.relevant
        wrong["mixed"] += mixed.relevant
    assert wrong["mixed"] > 3 * max(1, wrong["pure"])


async def test_identity_names_what_decides_the_answers():
    base = SimulationSettings()
    ids = {
        base.identity(0),
        base.identity(1),
        SimulationSettings(verdict_accuracy=0.9).identity(0),
        SimulationSettings(error_model="ambiguity").identity(0),
        SimulationSettings(systematic=1.0).identity(0),
    }
    assert len(ids) == 5
    assert SimulationSettings(latency_ms=500).identity(0) == base.identity(0)
    settings = CriticSettings("simulated", seed=3, error_model="ambiguity", verdict_accuracy=0.8)
    connection = await get_critic("simulated").connect(settings)
    assert connection.critic.identity == settings.simulation.identity(3)
    assert "ambiguity" in connection.critic.identity and "seed=3" in connection.critic.identity


def test_cli_selects_the_error_model(tmp_path):
    import argparse

    from lvlmva.commands.common import add_critic_arguments, critic_settings

    parser = argparse.ArgumentParser()
    add_critic_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    flags = ["--error-model", "ambiguity", "--sim-systematic", "0.8", "--no-cache"]
    args = parser.parse_args(flags)
    settings = critic_settings(args)
    assert settings.simulation.error_model == "ambiguity"
    assert settings.simulation.systematic == 0.8
    with pytest.raises(SystemExit):
        parser.parse_args(["--error-model", "clumpy"])
    bad = parser.parse_args(["--sim-systematic", "1.5", "--no-cache"])
    with pytest.raises(ConfigError, match="sim-systematic"):
        critic_settings(bad)
