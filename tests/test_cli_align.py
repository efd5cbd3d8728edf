"""The `lvlmva align` command: the main job, its report in a browser, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvlmva.pipeline.masking import DISAGREEMENT_WARNING


def lvlmva(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lvlmva.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("run")
    proc = lvlmva("align", "--dataset", "decoy-digits", "--n-align", "200", "--epochs", "2",
                  "--val-samples", "40", "--quiet", "--out", str(out),
                  "--cache-dir", str(tmp_path_factory.mktemp("cache")))  # cold: every call paid
    return out, proc


def test_align_main_job_writes_metrics_and_report(aligned_run):
    out, proc = aligned_run
    assert proc.returncode == 0, proc.stderr
    first_line = proc.stdout.splitlines()[0]
    assert "SIMULATED" in first_line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["after"]["test_accuracy"] > metrics["before"]["test_accuracy"]
    assert metrics["critic"] == "simulated"
    assert metrics["simulated_error_model"] == "independent"
    selection = metrics["selection"]
    assert selection["criterion"] == "counterfactual" and selection["validation_samples"] == 40
    assert "original" in selection["scores"] and len(selection["scores"]) == 6
    assert metrics["provider_calls"] == 2 * (200 + 40)  # alignment and validation critiques
    assert "Model choice by validation accuracy with the critic-flagged regions" in proc.stdout
    assert metrics["robust_verdicts"]["neighbours"] == 10
    assert (out / "model.pt").exists()
    report = (out / "report.html").read_text()
    assert "Model choice" in report and "overturned by similar clusters" in report
    assert (out / "report.html").stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_shows_its_images_in_headless_chromium(aligned_run, tmp_path):
    out, proc = aligned_run
    assert proc.returncode == 0, proc.stderr
    probe = tmp_path / "probe.html"
    probe.write_text(
        (out / "report.html").read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => {const imgs = [...document.images];"
            "document.body.dataset.images = imgs.length;"
            "document.body.dataset.broken = imgs.filter(i => !i.complete || "
            "i.naturalWidth === 0).length;});</script></body>",
        )
    )
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert 'data-broken="0"' in dom
    n_images = int(dom.split('data-images="', 1)[1].split('"', 1)[0])
    assert n_images >= 10


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", "no-such-data"], "no-such-data"),
        (["--model", "/nonexistent/model.pt"], "/nonexistent/model.pt"),
        (["--dataset", "decoy-mnist", "--data-dir", "/nonexistent"], "mnist"),
        (["--spec", "/nonexistent/spec.yaml", "--n-align", "4"], "spec.yaml"),
        (["--critic", "openai"], "--critic-model"),
        (["--critic", "openai", "--critic-model", "m", "--base-url", "http://127.0.0.1:9/v1"],
         "cannot reach"),
    ],
)
def test_bad_input_gives_one_line_error(args, needle, tmp_path):
    proc = lvlmva("align", *args, "--quiet", "--out", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert needle in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rpm", "0"], "--rpm must be positive"),
        (["--tpm", "-1"], "--tpm must be positive"),
        (["--clusters", "0"], "--clusters must be positive"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--n-align", "0"], "--n-align must be positive"),
    ],
)
def test_bad_numbers_are_refused_before_any_training(args, needle, tmp_path, capsys):
    from lvlmva.cli import main

    assert main(["align", *args, "--quiet", "--out", str(tmp_path / "o")]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lvlmva align: error: {needle}")
    assert "Training" not in out


def test_the_original_model_is_the_same_for_the_same_seed(tmp_path):
    befores = []
    for run in ("a", "b"):
        proc = lvlmva("align", "--dataset", "decoy-digits", "--critic", "ground-truth",
                      "--n-align", "16", "--epochs", "1", "--train-epochs", "1", "--quiet",
                      "--lambda", "1", "--val-samples", "0",  # one RRR model, no check: quick
                      "--out", str(tmp_path / run))
        assert proc.returncode == 0, proc.stderr
        befores.append(json.loads((tmp_path / run / "metrics.json").read_text())["before"])
    assert befores[0] == befores[1]


def test_the_gaussian_neighbour_kernel_reaches_the_run_and_its_report(tmp_path):
    proc = lvlmva("align", "--dataset", "decoy-digits", "--n-align", "48", "--epochs", "1",
                  "--train-epochs", "1", "--quiet", "--lambda", "1", "--val-samples", "0",
                  "--neighbour-kernel", "gaussian", "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    robust = json.loads((tmp_path / "metrics.json").read_text())["robust_verdicts"]
    assert robust["neighbour_kernel"] == "gaussian" and robust["clusters"] > 0
    assert "weighted by likeness (gaussian kernel)" in (tmp_path / "report.html").read_text()


def test_an_unreliable_critic_is_warned_of_in_the_output_metrics_and_report(tmp_path):
    proc = lvlmva("align", "--dataset", "decoy-digits", "--n-align", "48", "--epochs", "1",
                  "--train-epochs", "1", "--lambda", "1", "--val-samples", "0",
                  "--verdict-accuracy", "0.42", "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    robust = json.loads((tmp_path / "metrics.json").read_text())["robust_verdicts"]
    assert robust["overturned_share"] > DISAGREEMENT_WARNING and robust["warning"]
    assert f"WARNING: {robust['warning']}" in proc.stdout
    report = (tmp_path / "report.html").read_text()
    # with the critic's banner, at the top of the report
    assert report.index("the critic looks unreliable") < report.index("<h2>Model choice</h2>")


@pytest.mark.parametrize("critic", ["simulated", "ground-truth"])
def test_a_critic_that_needs_true_masks_is_refused_before_any_training(critic, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from lvlmva.cli import main

    rows = ["path,label"]
    for i in range(20):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    out_dir = tmp_path / "o"
    args = ["align", "--critic", critic, "--dataset", "image-folder", "--csv",
            str(tmp_path / "x.csv"), "--quiet", "--out", str(out_dir)]  # fmt: skip
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"the {critic} critic answers from ground-truth" in lines[0]
    assert "mask_path" in lines[0] and "'image-folder'" in lines[0]
    assert "Training" not in out and not (out_dir / "original.pt").exists()
