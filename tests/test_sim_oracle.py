"""`lvlmva serve-sim --dataset`: the oracle holds every image's spurious mask, keyed by the PNG
the pipeline sends to the Critic."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lvlmva.cli import add_command
from lvlmva.commands import serve_sim
from lvlmva.simulation import image_key
from lvlmva.vision.render import original_png, render_critic_images


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(), serve_sim)
    return parser.parse_args(["serve-sim", *kw.pop("argv")])


def test_the_oracle_key_is_the_png_the_pipeline_renders():
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(-1, 3, (8, 8), generator=torch.Generator().manual_seed(1))
    assert original_png(image) == render_critic_images(image, labels).original


def test_serve_sim_builds_and_writes_the_oracle_of_a_dataset(tmp_path):
    from lvlmva.vision.datasets import load_dataset

    folder = tmp_path / "oracle"
    args = _args(argv=["--dataset", "decoy-digits", "--oracle-split", "val",
                       "--oracle-dir", str(folder)])
    oracle = serve_sim._oracle(args)
    val = load_dataset("decoy-digits", seed=0).val
    assert len(list(folder.glob("*.npy"))) == len(oracle) > 0
    for i in (0, len(val) - 1):
        found = oracle.lookup(image_key(original_png(val.images[i])))
        assert np.array_equal(found, val.spurious_masks[i].bool().numpy())
    in_memory = serve_sim._oracle(_args(argv=["--dataset", "decoy-digits",
                                              "--oracle-split", "val"]))
    assert len(in_memory) == len(oracle)
    assert len(serve_sim._oracle(_args(argv=[]))) == 0  # no ground truth: every cluster relevant
