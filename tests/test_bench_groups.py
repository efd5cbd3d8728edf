"""bench/groups.py: JSON-line resume and the markdown table (no training: rows are made up)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("groups")


def _row(method: str, seed: int, wga: float, aga: float) -> dict:
    drop = {"gamma": 0.1, "defocus": 0.05, "contrast": 0.2}
    extra = {}
    if method == "lvlm-va":
        drop = {k: v - 0.01 for k, v in drop.items()}
        extra = {
            "verdict_accuracy": {"accuracy": 0.87},
            "masks": {"gt_pixels_covered": 0.5, "mask_pixels_off_gt": 0.8},
        }
    return {
        **extra,
        "benchmark": "synth-lesions",
        "seed": seed,
        "method": method,
        "test_accuracy": aga,
        "aga": aga,
        "wga": wga,
        "seconds": 10.0,
        "corruptions": {"mean_drop": drop},
    }


def test_results_resume_only_with_the_same_settings(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path)])
    path = tmp_path / "results.jsonl"
    results = bench.Results(path, bench.settings(args))
    results.add(_row("original", 0, 0.2, 0.7))
    assert json.loads(path.read_text().splitlines()[0])["config"] == bench.settings(args)
    again = bench.Results(path, bench.settings(args))
    assert again.find(benchmark="synth-lesions", seed=0, method="original") is not None
    other = bench.settings(bench.parse_args(["--out", str(tmp_path), "--epochs", "7"]))
    assert bench.Results(path, other).find(method="original") is None


def test_render_pairs_seeds_and_reports_wilcoxon(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--benchmarks", "synth-lesions"])
    results = bench.Results(tmp_path / "results.jsonl", bench.settings(args))
    for seed in range(5):
        results.add(_row("original", seed, 0.2 + 0.01 * seed, 0.7))
        results.add(_row("lvlm-va", seed, 0.4 + 0.01 * seed, 0.71))
    text = bench.render(results, args, "python bench/groups.py")
    aligned = next(line for line in text.splitlines() if line.startswith("| LVLM-VA"))
    cells = [c.strip() for c in aligned.split("|")]
    assert cells[6] == "0.031"  # 5 of 5 paired WGA differences positive: 1 / 32
    assert cells[8] == "+0.010"
    assert "0.749 / 0.446" in aligned  # the paper's figure, beside ours
    assert "| gamma | 0.100 ± 0.000 | 0.090 ± 0.000 | 0.010 ± 0.000 | 0.031 |" in text


def test_cells_match_on_the_settings_their_method_depends_on(bench, tmp_path):
    base = bench.settings(bench.parse_args(["--out", str(tmp_path)]))
    variant = {**base, "lambda_grid": [0.03], "jtt_upweights": [5.0]}
    assert bench.matches({"method": "lvlm-va", "config": base}, base)
    assert not bench.matches({"method": "lvlm-va", "config": base}, variant)
    assert bench.matches({"method": "original", "config": base}, variant)
    assert not bench.matches({"method": "jtt", "config": base}, variant)
    before_soft_masks = {k: v for k, v in base.items() if k != "soft_masks"}  # an older row
    assert bench.matches({"method": "lvlm-va", "config": before_soft_masks}, base)
    soft = bench.settings(bench.parse_args(["--out", str(tmp_path), "--soft-masks"]))
    assert not bench.matches({"method": "lvlm-va", "config": before_soft_masks}, soft)
    assert bench.matches({"method": "original", "config": before_soft_masks}, soft)
    before_align = {k: v for k, v in base.items() if k != "lambda_from"}  # searched lambdas
    assert not bench.matches({"method": "lvlm-va", "config": before_align}, base)
    search = bench.settings(bench.parse_args(["--out", str(tmp_path), "--lambda-from", "search"]))
    assert bench.matches({"method": "lvlm-va", "config": before_align}, search)


def test_write_markdown_keeps_the_prose_around_the_markers(bench, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{bench.BEGIN}\nold table\n{bench.END}\noutro\n")
    bench.write_markdown(page, "new table\n")
    assert page.read_text() == f"intro\n{bench.BEGIN}\nnew table\n{bench.END}\noutro\n"
    fresh = tmp_path / "fresh.md"
    bench.write_markdown(fresh, "only\n")
    assert fresh.read_text() == "only\n"
