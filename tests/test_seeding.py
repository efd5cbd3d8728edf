"""Seeded draws: the CPU's and the draws' own CUDA device, restored afterwards, no other
generator seeded (torch.manual_seed would queue a seed for every CUDA device)."""

from __future__ import annotations

import torch
from torch import nn

from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.models import reinitialize
from lvlmva.vision.seeding import cuda_devices, seeded
from lvlmva.vision.training import train_classifier


def test_seeded_draws_repeat_and_the_callers_state_is_back():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        first = torch.rand(4)
    with seeded(7):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next)  # as if nothing had been drawn


def test_a_cuda_device_without_an_index_is_the_current_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert cuda_devices("cuda") == [3]
    assert cuda_devices("cuda:1") == [1]
    assert cuda_devices("cpu") == [] and cuda_devices(None) == []


def test_initialising_and_training_seed_no_cuda_generator(monkeypatch):
    seeded_all = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded_all.append(seed))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    data = ShortcutDataset(torch.rand(8, 1, 4, 4), torch.arange(8) % 2)
    reinitialize(model, seed=1)
    train_classifier(model, data, epochs=1, batch_size=4, seed=1, progress=False)
    assert seeded_all == []
