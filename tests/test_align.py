"""End to end: align() on the embedded decoy-digits data, in-process and over HTTP."""

from __future__ import annotations

import copy

import pytest
import torch

from lvlmva.api import CriticSettings, align


@pytest.fixture(scope="module")
def digits():
    from lvlmva.vision.datasets import load_dataset

    return load_dataset("decoy-digits", seed=0)


@pytest.fixture(scope="module")
def shortcut_model(digits):
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    torch.manual_seed(0)
    model = build_model("mlp", digits.info)
    train_classifier(model, digits.train, epochs=3, seed=0, progress=False)
    return model


async def test_ground_truth_alignment_beats_the_shortcut(digits, shortcut_model):
    result = await align(
        copy.deepcopy(shortcut_model), digits, critic=CriticSettings(kind="ground-truth"),
        n_align=300, epochs=3, progress=False,
    )
    assert result.provider_calls == 0
    assert len(result.samples) == 300
    assert result.after.test_accuracy > result.before.test_accuracy + 0.05
    # decoy-digits' validation groups follow the labels: the check replaces the true squares
    selection = result.selection
    assert selection.criterion == "counterfactual" and selection.n_val == 100
    assert not selection.kept_original and result.lam == selection.lam
    assert len(selection.candidates) == 6  # the original and five lambdas
    assert result.metrics_dict()["selection"]["chosen"] == selection.chosen


async def test_simulated_critic_masks_track_the_decoy(digits, shortcut_model, tmp_path):
    critic = CriticSettings(kind="simulated", verdict_accuracy=1.0, cache_dir=tmp_path / "c")
    result = await align(
        copy.deepcopy(shortcut_model), digits, critic=critic, n_align=24, epochs=1,
        val_samples=0, progress=False,
    )
    assert result.provider_calls == 2 * 24  # one Critic and one Judge call per sample
    assert result.failed_jobs == 0
    assert result.verdict_accuracy.accuracy == pytest.approx(1.0)
    masked = [s for s in result.samples if s.mask is not None and s.mask.sum() > 0]
    assert masked, "a perfect critic on a shortcut model must mark some decoy clusters"
    for sample in masked:
        decoy = digits.train.spurious_masks[sample.index]
        assert (sample.mask.bool() & decoy).any()


async def test_rerun_is_answered_from_the_cache(digits, shortcut_model, tmp_path):
    critic = CriticSettings(kind="simulated", cache_dir=tmp_path / "cache")
    first = await align(copy.deepcopy(shortcut_model), digits, critic=critic, n_align=16,
                        epochs=1, val_samples=8, progress=False)
    second = await align(copy.deepcopy(shortcut_model), digits, critic=critic, n_align=16,
                         epochs=1, val_samples=8, progress=False)
    assert first.provider_calls == 2 * (16 + 8)  # the validation images' critiques too
    assert second.provider_calls == 0
    assert second.cache_hits >= 2 * (16 + 8)
    first_verdicts = {s.index: s.verdicts for s in first.samples}
    assert first_verdicts == {s.index: s.verdicts for s in second.samples}


async def test_validation_masks_from_the_neighbours_cost_no_call(digits, shortcut_model, tmp_path):
    critic = CriticSettings(kind="simulated", cache_dir=tmp_path / "cache")
    result = await align(copy.deepcopy(shortcut_model), digits, critic=critic, n_align=16,
                         epochs=1, val_samples=8, val_masks="neighbours", progress=False)
    assert result.provider_calls == 2 * 16  # the alignment samples' critiques only
    selection = result.selection
    assert selection.criterion == "counterfactual" and selection.n_val == 8
    assert "nearest critiqued clusters" in selection.reason


async def test_http_simulation_gives_the_same_masks_as_in_process(digits, shortcut_model):
    results = {}
    for transport in ("in-process", "http"):
        critic = CriticSettings(kind="simulated", sim_transport=transport)
        results[transport] = await align(
            copy.deepcopy(shortcut_model), digits, critic=critic, n_align=12, epochs=1,
            val_samples=0, progress=False, streaming=False,
        )
    local = {s.index: s for s in results["in-process"].samples}
    remote = {s.index: s for s in results["http"].samples}
    assert local.keys() == remote.keys()
    for index, sample in local.items():
        assert sample.verdicts == remote[index].verdicts
        assert torch.equal(sample.mask, remote[index].mask)


async def test_unknown_spec_class_fails_before_any_call(digits, shortcut_model, tmp_path):
    from lvlmva.errors import ConfigError

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "task: wrong\nfamily: decoy-digits\nclasses:\n  - name: cat\n    description: a cat\n"
    )
    with pytest.raises(ConfigError):
        await align(copy.deepcopy(shortcut_model), digits, spec, n_align=4, progress=False)


async def test_an_explanation_error_ends_the_run_with_that_error(
    digits, shortcut_model, monkeypatch
):
    import lvlmva.pipeline.explain as stages

    real = stages.explain_segment_render
    calls = []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("attribution broke on batch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "explain_segment_render", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="batch 2"):
        await align(
            copy.deepcopy(shortcut_model), digits, critic=CriticSettings(kind="simulated"),
            n_align=48, explain_batch=16, epochs=1, progress=False,
        )


async def test_retraining_starts_from_the_same_weights_for_a_seed(digits, shortcut_model):
    kwargs = {"critic": CriticSettings(kind="ground-truth"), "n_align": 32, "epochs": 1,
              "streaming": False, "progress": False, "seed": 3, "lam": 0.01,
              "keep_original": False}
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # the caller's global random state must not matter
        runs.append(await align(copy.deepcopy(shortcut_model), digits, **kwargs))
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(a, b)


async def test_the_model_does_not_depend_on_the_order_answers_arrive_or_on_streaming(
    digits, shortcut_model, monkeypatch
):
    import asyncio

    from lvlmva.critics import CRITICS
    from lvlmva.critics.simulated import SimulatedCritic

    class Reordering:
        """Delegates to the simulation; each call waits `delay(call number)` seconds first."""

        def __init__(self, inner, delay):
            self.inner, self.delay, self.calls = inner, delay, 0
            self.name = inner.name
            self.supports_structured_output = inner.supports_structured_output

        async def complete(self, request, *, timeout):
            self.calls += 1
            await asyncio.sleep(self.delay(self.calls))
            return await self.inner.complete(request, timeout=timeout)

        async def aclose(self):
            await self.inner.aclose()

    class ReorderedSimulation(SimulatedCritic):
        """A critic backend of the registry: the simulation behind `Reordering`."""

        name = "reordered-simulation"

        def __init__(self, delay):
            self.delay = delay

        async def connect(self, settings):
            connection = await super().connect(settings)
            connection.critic = connection.judge = Reordering(connection.critic, self.delay)
            return connection

    runs = []
    in_order, reversed_ = (lambda n: 0.0), (lambda n: max(0.0, 0.05 - 0.001 * n))
    for delay, streaming in ((in_order, False), (reversed_, False), (reversed_, True)):
        monkeypatch.setitem(CRITICS, "reordered-simulation", ReorderedSimulation(delay))
        runs.append(
            await align(
                copy.deepcopy(shortcut_model), digits,
                critic=CriticSettings("reordered-simulation", max_in_flight=16),
                n_align=48, explain_batch=16, epochs=2, streaming=streaming, val_samples=16,
                lam_scales=(1e-4, 1e-3), keep_original=False, progress=False,
            )
        )
    for run in runs[1:]:
        assert [s.index for s in runs[0].samples] == [s.index for s in run.samples]
        assert run.selection.to_dict() == runs[0].selection.to_dict()
        for a, b in zip(runs[0].model.parameters(), run.model.parameters(), strict=True):
            assert torch.equal(a, b)


async def test_masks_are_soft_by_default_and_hard_on_request(digits, shortcut_model):
    masks = {}
    for soft in (True, False):
        kwargs = {} if soft else {"soft_masks": False}
        result = await align(
            copy.deepcopy(shortcut_model), digits, n_align=24, epochs=0, streaming=False,
            val_samples=0, progress=False, **kwargs,
        )
        masks[soft] = torch.stack([s.mask for s in result.samples if s.mask is not None])
    hard = masks[False]
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    soft = masks[True]
    assert ((soft > 0) & (soft < 1)).any()  # responsibilities, not 0/1
    assert soft.max() <= 1.0 and soft.min() >= 0.0


async def test_fused_verdicts_with_logprobs_grade_the_consensus(digits, shortcut_model):
    """The simulation's calibrated P("no") (ambiguity errors: lower on mixed clusters) reaches
    each record's shares; the run says how many samples were graded."""
    critic = CriticSettings(kind="simulated", verdict_accuracy=0.87, error_model="ambiguity",
                            fused=True, verdict_logprobs=5)  # fmt: skip
    result = await align(
        copy.deepcopy(shortcut_model), digits, critic=critic, n_align=24, epochs=0,
        streaming=False, val_samples=0, progress=False,
    )
    assert result.provider_calls == 24  # one fused call a sample: logprobs cost no call
    assert result.robust["graded_by_logprobs"] == 24
    shares = [p for s in result.samples for p in s.votes.values()]
    assert all(0.0 < p < 1.0 for p in shares) and len(set(shares)) > 2
    for sample in result.samples:  # the stated verdict is the likelier word (or a tie)
        assert all(p >= 0.5 if not sample.verdicts[c] else p <= 0.5
                   for c, p in sample.votes.items())  # fmt: skip
