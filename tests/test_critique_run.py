"""Critique runs: durable, resumable, extendable; aligning from one equals aligning with the same
verdicts; reviewed overrides change the masks used exactly at the overridden clusters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lvlmva.api import CriticSettings, align
from lvlmva.errors import ConfigError
from lvlmva.pipeline import CritiqueOptions
from lvlmva.pipeline.critique_run import critique_run, sample_order
from lvlmva.pipeline.from_run import (
    align_from_run,
    check_run_fits,
    reviewed_entries,
    reviewed_records,
)
from lvlmva.runs import CritiqueRun


@pytest.fixture(scope="module")
def digits():
    from lvlmva.vision.datasets import load_dataset

    return load_dataset("decoy-digits", seed=0)


@pytest.fixture(scope="module")
def model(digits):
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    torch.manual_seed(0)
    net = build_model("mlp", digits.info)
    train_classifier(net, digits.train, epochs=2, seed=0, progress=False)
    return net


def _critic(tmp_path, **kw) -> CriticSettings:
    return CriticSettings(cache_dir=tmp_path / "cache", **kw)


async def test_a_run_stores_every_sample_and_a_larger_n_appends(digits, model, tmp_path):
    out = tmp_path / "run"
    options = CritiqueOptions(explain_batch=16)
    first = await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path),
                               critique=options, n=20, progress=False, checkpoint_sha256="ab" * 32)
    assert (first.requested, first.skipped, first.stored) == (20, 0, {"ok": 20})
    again = await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path),
                               critique=options, n=32, progress=False, checkpoint_sha256="ab" * 32)
    assert (again.skipped, again.stored) == (20, {"ok": 12})
    assert again.counts.tally.provider_calls == 24  # only the 12 new samples were asked
    with CritiqueRun.open(out) as run:
        assert sorted(run.done_indices()) == sorted(sample_order(len(digits.train), 32, 0).tolist())
        m = run.manifest
        assert (m.dataset, m.split, m.masks, m.checkpoint_sha256) == (
            "decoy-digits", "train", "soft", "ab" * 32)
        assert m.spec_version and m.prompt_version and m.critic["kind"] == "simulated"
        assert "api_key" not in m.critic
        sample = run.get(next(iter(run.done_indices())))
        record = sample.record
        assert record.prediction is not None and 0 < record.confidence <= 1
        assert record.spurious_colors is not None and record.critique
        stored = run.arrays(record.index)
        assert stored.attribution.shape == stored.labels.shape == (digits.info.image_size,) * 2
        assert stored.responsibilities.shape[0] >= max(record.cluster_ids) + 1
        assert run.summary().critic_accuracy is not None


async def test_a_resumed_run_must_be_made_the_same_way(digits, model, tmp_path):
    out = tmp_path / "run"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=4,
                       progress=False)
    with pytest.raises(ConfigError, match="verdict_accuracy"):
        await critique_run(copy.deepcopy(model), digits, out, n=4, progress=False,
                           critic=_critic(tmp_path, verdict_accuracy=0.5))
    with pytest.raises(ConfigError, match="nothing to critique"):
        await critique_run(model, digits, tmp_path / "gt", critic=CriticSettings("ground-truth"))


@pytest.mark.parametrize("neighbours", [0, 10])
async def test_aligning_from_an_unreviewed_run_equals_align_with_the_same_verdicts(
    digits, model, tmp_path, neighbours
):
    out = tmp_path / "run"
    options = CritiqueOptions(explain_batch=24)
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path),
                       critique=options, n=40, progress=False)
    # no validation critique in a run: the check has no counterfactual on either side
    direct = await align(copy.deepcopy(model), digits, critic=_critic(tmp_path), n_align=40,
                         explain_batch=24, epochs=1, streaming=False, progress=False,
                         neighbours=neighbours, val_samples=0)
    assert direct.provider_calls == 0  # the same requests: all answered from the cache
    with CritiqueRun.open(out) as run:
        from_run = await align_from_run(copy.deepcopy(model), digits, run, epochs=1,
                                        progress=False, neighbours=neighbours, val_samples=0)
    assert from_run.provider_calls == 0 and from_run.cache_hits == 0
    overturned = from_run.robust["overturned_no_to_yes"] + from_run.robust["overturned_yes_to_no"]
    assert (overturned > 0) == (neighbours > 0)  # the pooling did change masks
    assert from_run.robust == direct.robust
    assert [r.index for r in from_run.samples] == [r.index for r in direct.samples]
    for a, b in zip(from_run.samples, direct.samples, strict=True):
        assert torch.equal(a.mask, b.mask) and a.verdicts == b.verdicts
    for p, q in zip(from_run.model.parameters(), direct.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert from_run.after.test_accuracy == direct.after.test_accuracy


async def test_overrides_change_the_masks_used_exactly_at_the_overridden_clusters(
    digits, model, tmp_path
):
    out = tmp_path / "run"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=12,
                       critique=CritiqueOptions(soft_masks=False), progress=False)
    with CritiqueRun.open(out) as run:
        before = {r.index: r.mask for r in reviewed_records(run, digits)}
        flipped: dict[int, list[int]] = {}
        for index in list(before)[:5]:
            sample = run.get(index)
            color, cid = sample.record.colors[0], sample.record.cluster_ids[0]
            run.override(index, color, not sample.effective_verdicts[color], reviewer="t")
            flipped[index] = [cid]
        after = {r.index: r.mask for r in reviewed_records(run, digits)}
        for index, mask in after.items():
            changed = (mask != before[index]).numpy()
            labels = run.arrays(index).labels
            assert np.array_equal(changed, np.isin(labels, flipped.get(index, []))), index


async def test_a_run_is_checked_on_validation_images_masked_by_their_nearest_clusters(
    digits, model, tmp_path
):
    out = tmp_path / "run"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=40,
                       progress=False)
    with CritiqueRun.open(out) as run:
        result = await align_from_run(copy.deepcopy(model), digits, run, epochs=1,
                                      progress=False, val_samples=40)
    selection = result.selection
    assert result.provider_calls == 0 and selection.criterion == "counterfactual"
    assert "nearest critiqued clusters" in selection.reason
    assert selection.n_val == 40
    assert all(c.score == c.score for c in selection.candidates)  # every one scored, no NaN


async def test_a_validation_critique_run_is_the_checks_flagged_images(digits, model, tmp_path):
    out, val = tmp_path / "run", tmp_path / "val"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=40,
                       progress=False)
    await critique_run(copy.deepcopy(model), digits, val, critic=_critic(tmp_path), n=30,
                       split="val", progress=False)
    with CritiqueRun.open(out) as run, CritiqueRun.open(val) as val_run:
        result = await align_from_run(copy.deepcopy(model), digits, run, epochs=1,
                                      progress=False, val_run=val_run)
        with pytest.raises(ConfigError, match="validation split"):
            await align_from_run(copy.deepcopy(model), digits, run, val_run=run, epochs=1,
                                 progress=False)
    selection = result.selection
    assert result.provider_calls == 0 and selection.criterion == "counterfactual"
    assert "validation critique run" in selection.reason and selection.n_val == 30


async def test_the_neighbours_never_outvote_a_reviewers_override(digits, model, tmp_path):
    out = tmp_path / "run"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=24,
                       progress=False)
    with CritiqueRun.open(out) as run:
        # make every sample's first colour the odd one out: the reviewer says the opposite of
        # what the neighbours say, so only pinning keeps it
        pooled = {e.record.index: e for e in reviewed_entries(run, digits)}
        first = {i: run.get(i).record.colors[0] for i in pooled}
        chosen = list(pooled)[:6]
        for index in chosen:
            run.override(index, first[index], not run.get(index).effective_verdicts[first[index]],
                         reviewer="t")  # fmt: skip
        entries = reviewed_entries(run, digits)
        result = await align_from_run(copy.deepcopy(model), digits, run, epochs=1,
                                      progress=False, lam=1.0)
    for entry in entries:
        index = entry.record.index
        assert bool(entry.pinned[0]) == (index in chosen)
        assert not bool(entry.pinned[1:].any())
    by_index = {r.index: r for r in result.samples}
    for index in chosen:
        record = by_index[index]
        reviewer_says_no = not record.verdicts[first[index]]
        assert record.consensus[first[index]] == float(reviewer_says_no)


async def test_a_run_of_another_split_or_model_is_refused(digits, model, tmp_path):
    out = tmp_path / "val"
    await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=3,
                       split="val", progress=False, checkpoint_sha256="cd" * 32)
    with CritiqueRun.open(out) as run:
        assert run.manifest.split == "val" and run.count() == 3
        with pytest.raises(ConfigError, match="training split"):
            check_run_fits(run, digits)
    train = tmp_path / "train"
    await critique_run(copy.deepcopy(model), digits, train, critic=_critic(tmp_path), n=3,
                       progress=False, checkpoint_sha256="cd" * 32)
    with CritiqueRun.open(train) as run, pytest.raises(ConfigError, match="checkpoint"):
        check_run_fits(run, digits, "ef" * 32)


async def test_the_report_flags_wrong_verdicts_and_links_images_past_the_embed_limit(
    digits, model, tmp_path
):
    from lvlmva.prompts import load_spec
    from lvlmva.report import EMBED_LIMIT, write_align_report

    critic = _critic(tmp_path, verdict_accuracy=0.5)
    result = await align(copy.deepcopy(model), digits, critic=critic, n_align=EMBED_LIMIT + 2,
                         epochs=0, progress=False)
    spec = load_spec(digits.info.task)
    small = write_align_report(tmp_path / "small.html", result, digits, original_model=model,
                               n_samples=2, spec=spec)
    text = small.read_text()
    assert "data:image/png;base64" in text and not (tmp_path / "small_files").exists()
    assert spec.classes[0].description in text and "group:" in text
    assert "(ground truth: " in text or result.verdict_accuracy.accuracy == 1.0
    big = write_align_report(tmp_path / "big.html", result, digits, original_model=model,
                             n_samples=EMBED_LIMIT + 2)
    assert "data:image/png;base64" not in big.read_text().split("Alignment samples")[1]
    assert len(list((tmp_path / "big_files").glob("*.png"))) >= 6 * (EMBED_LIMIT + 2)
    assert "predicted" in big.read_text() and "p=" in big.read_text()


def test_the_cli_critiques_and_the_review_apps_hook_aligns_from_the_run(digits, model, tmp_path):
    import asyncio
    import json

    from lvlmva.cli import main
    from lvlmva.review.realign import SubprocessRealign, realign_argv
    from lvlmva.vision.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", model, "mlp", digits.info)
    out = tmp_path / "run"
    argv = ["critique", "--model", str(tmp_path / "m.pt"), "--n", "10", "--masks", "hard",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    with CritiqueRun.open(out) as run:
        assert run.count() == 10 and run.manifest.extra["model_path"] == str(tmp_path / "m.pt")
        assert realign_argv(run)[:5] == ["lvlmva", "align", "--critique", str(out.resolve()),
                                         "--masks"]
        message = asyncio.run(SubprocessRealign(("--quiet", "--epochs", "1"))(run))
    folder = next((out / "aligned").iterdir())
    assert str(folder) in message and "LVLM calls 0" in message
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["provider_calls"] == 0 and metrics["n_masks"] == 10
    assert (folder / "report.html").exists() and (folder / "model.pt").exists()


async def test_a_graded_critique_keeps_its_confidence_in_the_run_and_the_run_path_uses_it(
    digits, model, tmp_path
):
    out = tmp_path / "run"
    critic = _critic(tmp_path, verdict_logprobs=5)
    await critique_run(copy.deepcopy(model), digits, out, critic=critic, n=8, progress=False)
    with CritiqueRun.open(out) as run:
        samples = list(run.iter_samples())
        graded = [s for s in samples if s.record.agreement is not None]
        assert graded  # the simulated critic reports a confidence with its verdicts
        for s in graded:
            assert all(0.0 <= v <= 1.0 for v in s.record.agreement.values())
        sample = graded[0]
        color = next(c for c, v in sample.record.agreement.items() if v < 1.0)
        entry = next(e for e in reviewed_entries(run, digits)
                     if e.record.index == sample.record.index)  # fmt: skip
        share = float(entry.no_share[list(sample.record.colors).index(color)])
        verdict = sample.record.verdicts[color]
        assert share == pytest.approx(1 - sample.record.agreement[color] if verdict
                                      else sample.record.agreement[color])  # fmt: skip
        assert 0.0 < share < 1.0  # graded, not 0 / 1
        run.override(sample.record.index, color, not verdict, reviewer="t")
        entry = next(e for e in reviewed_entries(run, digits)
                     if e.record.index == sample.record.index)  # fmt: skip
        assert float(entry.no_share[list(sample.record.colors).index(color)]) == float(verdict)


async def test_a_run_with_votes_stores_the_majority_and_how_many_agreed(digits, model, tmp_path):
    out = tmp_path / "run"
    result = await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path),
                                critique=CritiqueOptions(votes=3), n=4, progress=False)
    assert result.counts.tally.provider_calls == 3 * 2 * 4  # three Critic + Judge pairs each
    with CritiqueRun.open(out) as run:
        agreements = [v for s in run.iter_samples() for v in (s.record.agreement or {}).values()]
    assert agreements and set(round(v, 4) for v in agreements) <= {0.6667, 1.0}
    with pytest.raises(ConfigError, match="votes"):
        await critique_run(copy.deepcopy(model), digits, out, critic=_critic(tmp_path), n=4,
                           progress=False)
