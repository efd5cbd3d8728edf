"""The study's own image-folder task and the cost estimate of robust verdicts."""

from __future__ import annotations

import json

from lvlmva.pipeline.selection import choose_criterion
from lvlmva.prompts import load_spec
from lvlmva.vision.datasets import load_dataset


def test_the_stamp_task_is_a_plain_image_folder_with_a_small_minority(load_bench, tmp_path):
    task = load_bench("make_stamp_task")
    csv = task.write_task(tmp_path, sizes={"train": 40, "val": 80, "test": 20})
    splits = load_dataset("image-folder", csv=str(csv), image_size=32)
    assert splits.info.class_names == ("cross", "ring") and splits.info.channels == 3
    assert len(splits.train) == 40 and splits.train.spurious_masks.any()
    # the shortcut holds in validation: its minority groups are too small to score WGA
    assert choose_criterion(splits.val, can_critique=True)[0] == "counterfactual"
    spec = load_spec(str(tmp_path / "spec.yaml"))
    spec.check_classes(splits.info.class_names)


def test_estimate_counts_votes_validation_images_and_the_batch_price(capsys):
    from lvlmva.cli import main

    def estimate(*flags: str) -> str:
        assert main(["estimate", "--jobs", "1000", "--critic-model", "gpt-4o", *flags]) == 0
        return capsys.readouterr().out

    one, three = json.loads(estimate("--json")), json.loads(estimate("--votes", "3", "--json"))
    assert one["jobs"] == 1000 + 250  # the model check's validation images (n / 4, at least 100)
    assert three["jobs"] == 3 * one["jobs"] and abs(three["usd"] - 3 * one["usd"]) < 1e-9
    assert json.loads(estimate("--val-jobs", "0", "--json"))["jobs"] == 1000
    text = estimate()
    assert "through the Batch API" in text and "250 validation" in text
