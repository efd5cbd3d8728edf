"""bench/align_sim.py on the embedded decoy-digits data: rows, JSON lines, summary, search."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("align_sim")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = ["--dataset", "decoy-digits", "--n-align", "40", "--epochs", "1", "--train-epochs", "1"]


def test_compare_streaming_writes_both_modes_and_summarises(bench, tmp_path):
    out = tmp_path / "runs.jsonl"
    summary = bench.main(
        [*TINY, "--seeds", "0", "1", "--compare-streaming", "--json-out", str(out)]
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert "command" in lines[0]
    rows = [line for line in lines if "seed" in line]
    assert sorted((r["seed"], r["mode"]) for r in rows) == [
        (0, "sequential"),
        (0, "streamed"),
        (1, "sequential"),
        (1, "streamed"),
    ]
    # the order alternates with the seed
    assert [r["mode"] for r in rows] == ["streamed", "sequential", "sequential", "streamed"]
    for row in rows:
        assert row["n_align"] == 40
        assert row["masks"] == 40
        # one Critic and one Judge call per sample, and per validation image of align's model
        # check (decoy-digits has no usable validation groups: at least 100 images)
        assert row["lvlm_calls"] == 2 * (40 + 100)
        assert 0.0 <= row["verdict_accuracy"] <= 1.0
        # align chose lambda on validation (or kept the original: then None), the same for a
        # seed in both modes
        assert row["lambda"] is None or row["lambda"] > 0
        assert row["threads"] == 1
        assert 0.0 <= row["mask_spurious_recall"] <= row["clustered_spurious_recall"] <= 1.0
        assert row["train_start_s"] <= row["wall_s"]
        by_class = row["clustered_spurious_recall_by_class"]
        assert by_class and set(by_class) <= {str(d) for d in range(10)}
    for seed in (0, 1):
        assert len({r["lambda"] for r in rows if r["seed"] == seed}) == 1
    assert set(summary["streamed_over_sequential_wall"]) == {"0", "1"}
    assert "after_mean>=0.94" in summary["targets_met"]
    assert "streamed_faster" in summary["targets_met"]
    # summarising the file again gives the same figures
    assert bench.main(["--summarize", str(out)]) == summary


def test_both_modes_start_from_the_same_weights(bench, tmp_path):
    """Streamed and sequential runs of a seed start from the same initial RRR weights (with
    no RRR epochs both evaluate exactly those), so they compare wall time, not inits."""
    out = tmp_path / "runs.jsonl"
    args = [*TINY, "--epochs", "0", "--seeds", "0", "--compare-streaming", "--json-out", str(out)]
    bench.main(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert [r["mode"] for r in rows] == ["streamed", "sequential"]
    assert rows[0]["after"] == rows[1]["after"]
    assert rows[0]["rrr_steps"] == rows[1]["rrr_steps"] == 0


def test_search_lambda_scores_the_repainted_validation_split(bench, tmp_path):
    out = tmp_path / "search.jsonl"
    bench.main([*TINY, "--seeds", "--search-lambda", "--grid", "0.01", "1", "--json-out", str(out)])
    found = [json.loads(line) for line in out.read_text().splitlines() if "lambda_search" in line]
    search = found[0]["lambda_search"]
    assert search["validation"] == "repainted"
    assert search["criterion"] == "accuracy"
    assert set(search["scores"]) == {"0.01", "1"}
    assert search["best_lambda"] in (0.01, 1.0)
    assert search["masks"] == 40


def test_repaint_decoys_changes_only_the_squares(bench):
    from lvlmva.vision.datasets import load_dataset

    val = load_dataset("decoy-digits", seed=0).val
    painted = bench.repaint_decoys(val, seed=3)
    outside = ~val.spurious_masks[:, None]
    assert torch.equal(painted.images[outside], val.images[outside])
    assert not torch.equal(painted.images, val.images)
    assert torch.equal(painted.labels, val.labels)
