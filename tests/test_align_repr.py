"""`AlignResult` / `SampleRecord` reprs stay short: asyncio.run() on Python 3.11+ calls repr()
of the result of `align` (CPython issue 112559), so a repr that formats every tensor and PNG
stalled `align_sync` and the CLI for many seconds after a large run."""

from __future__ import annotations

import asyncio
import time

import torch
from torch import nn

from lvlmva.api import AlignResult, CriticSettings, CritiqueCounts, SampleRecord
from lvlmva.engine.types import Tally
from lvlmva.vision.metrics import Metrics


def _record(i: int) -> SampleRecord:
    return SampleRecord(
        index=i,
        label=3,
        class_name="3",
        cluster_labels=torch.zeros(28, 28, dtype=torch.long),
        colors=("red", "blue"),
        cluster_ids=(0, 1),
        status="ok",
        mask=torch.ones(28, 28),
        verdicts={"red": True, "blue": False},
        critique="x" * 2000,
        images={"original": b"\x89PNG" + bytes(5000)},
    )


def _result(n: int) -> AlignResult:
    return AlignResult(
        model=nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)),
        before=Metrics(0.45, None, None, None, 100),
        after=Metrics(0.95, None, None, None, 100),
        samples=[_record(i) for i in range(n)],
        lam=0.003,
        critic=CriticSettings(),
        counts=CritiqueCounts(Tally(provider_calls=2 * n)),
    )


def test_sample_record_repr_leaves_out_tensors_and_images():
    text = repr(_record(7))
    assert "index=7" in text and "verdicts=" in text
    assert "tensor" not in text and "PNG" not in text and "xxxx" not in text


def test_align_result_repr_is_a_short_summary():
    text = repr(_result(3))
    assert text.startswith("AlignResult(samples=3, masks=3, lam=0.003")
    assert "before=0.45" in text and "after=0.95" in text and "provider_calls=6" in text
    assert len(text) < 200


def test_asyncio_run_returns_a_large_result_at_once():
    result = _result(1000)

    async def give() -> AlignResult:
        return result

    started = time.perf_counter()
    assert asyncio.run(give()) is result
    assert time.perf_counter() - started < 1.0
