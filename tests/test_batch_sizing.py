"""Automatic batch sizing of explanations: the plan follows the probe, is remembered, and an
out-of-memory error halves it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lvlmva.vision import attribution, batch_sizing
from lvlmva.vision.attribution import Explainer, explain
from lvlmva.vision.batch_sizing import (
    CPU_REUSE_BYTES,
    CPU_TRIM_BYTES,
    MAX_SAMPLES,
    MIN_TRIM_SAMPLES,
    WORKING_SET_FACTOR,
    ActivationProfile,
    architecture_key,
    forget_plans,
    plan_batch,
    profile_activations,
)


@pytest.fixture(autouse=True)
def _no_plans():
    forget_plans()
    yield
    forget_plans()


def _conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    )


def test_the_probe_measures_the_largest_activation_per_sample():
    profile = profile_activations(_conv(), (3, 32, 32), "cpu")
    assert profile.largest_bytes == 64 * 32 * 32 * 4  # the convolution's (and ReLU's) output
    # input, convolution, ReLU, pooling, flatten (a view, counted like any output), logits
    assert profile.output_bytes == (3 + 2 * 64) * 32 * 32 * 4 + (64 + 64 + 2) * 4
    assert profile.peak_bytes is None


def test_on_the_cpu_the_largest_activation_stays_within_the_allocator_reuse_size():
    plan = plan_batch(_conv(), (3, 32, 32), "cpu")
    assert plan.samples_per_forward == CPU_REUSE_BYTES // (64 * 32 * 32 * 4) == 128
    assert plan.bound == "reuse size" and plan.device == "cpu"
    tiny = plan_batch(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2), "cpu")
    assert tiny.samples_per_forward == MAX_SAMPLES and tiny.bound == "cap"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _cpu_plan(largest: int, output: int) -> batch_sizing.BatchPlan:
    """The CPU plan for a probe that measured `largest` and `output` bytes per sample."""
    return batch_sizing._plan_from(ActivationProfile(largest, output, None), torch.device("cpu"))


def test_a_shallow_model_keeps_its_working_set_within_the_trim_threshold():
    # per sample: 3,136 bytes of input; its largest activation alone would allow 10,699
    plan = plan_batch(_mlp(), (1, 28, 28), "cpu")
    output = (784 + 784 + 256 + 256 + 10) * 4  # input, flatten, linear, ReLU, logits
    assert plan.profile.output_bytes == output
    assert CPU_REUSE_BYTES // plan.profile.largest_bytes == 10699
    assert plan.bound == "trim size"
    assert plan.samples_per_forward == CPU_TRIM_BYTES // (WORKING_SET_FACTOR * output) == 1337
    assert plan.samples_per_forward * WORKING_SET_FACTOR * output <= CPU_TRIM_BYTES


def test_the_trim_bound_never_cuts_a_pass_below_its_floor():
    # a convolutional net's working set: far above the trim threshold's share per sample
    deep = _cpu_plan(256 << 10, 2_500_000)
    assert deep.bound == "reuse size" and deep.samples_per_forward == 128
    # between: the floor binds, below the reuse size
    middle = _cpu_plan(4096, 100_000)
    assert CPU_TRIM_BYTES // (WORKING_SET_FACTOR * 100_000) < MIN_TRIM_SAMPLES
    assert middle.bound == "trim size" and middle.samples_per_forward == MIN_TRIM_SAMPLES
    # the same profile, the same plan (no timing and no load in the rule)
    again = _cpu_plan(4096, 100_000)
    assert (again.samples_per_forward, again.bound) == (middle.samples_per_forward, middle.bound)


def test_the_rule_is_monotone_in_the_working_set():
    counts = [
        _cpu_plan(1024, w).samples_per_forward for w in (1_000, 10_000, 40_000, 100_000, 10**6)
    ]
    assert counts == sorted(counts, reverse=True)
    assert all(MIN_TRIM_SAMPLES <= c <= MAX_SAMPLES for c in counts)


def test_the_plan_is_probed_once_per_architecture_shape_and_device(monkeypatch):
    probes = []
    real = batch_sizing.profile_activations

    def counting(model, shape, device):
        probes.append(tuple(shape))
        return real(model, shape, device)

    monkeypatch.setattr(batch_sizing, "profile_activations", counting)
    images, train = torch.rand(3, 3, 32, 32), torch.rand(8, 3, 32, 32)
    first = explain(_conv(0), images, [0, 1, 0], baselines=train, n_baselines=4)
    again = explain(_conv(1), images, [0, 1, 0], baselines=train, n_baselines=4)  # other weights
    assert probes == [(3, 32, 32)]
    assert not torch.equal(first, again)
    explain(_conv(0), images[:, :, :16, :16], [0, 1, 0], n_baselines=4)  # other shape
    assert probes == [(3, 32, 32), (3, 16, 16)]
    assert architecture_key(_conv(0)) == architecture_key(_conv(1))
    assert architecture_key(_conv(0)) != architecture_key(nn.Sequential(nn.Linear(2, 2)))


def test_the_probe_is_one_forward_of_two_samples():
    model = _conv()
    batches = []
    model[0].register_forward_hook(lambda m, inputs, out: batches.append(len(inputs[0])))
    plan_batch(model, (3, 32, 32), "cpu")
    plan_batch(model, (3, 32, 32), "cpu")
    assert batches == [batch_sizing.PROBE_SAMPLES] == [2]


def test_out_of_memory_halves_the_automatic_plan_and_retries(monkeypatch):
    images, train = torch.rand(2, 3, 32, 32), torch.rand(8, 3, 32, 32)
    expected = explain(_conv(), images, [0, 1], baselines=train, n_baselines=4)
    real = attribution.AttributionMethod.attribute
    seen = []

    def failing_once(self, model, work):
        seen.append(work.samples_per_forward)
        if len(seen) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, model, work)

    monkeypatch.setattr(attribution.AttributionMethod, "attribute", failing_once)
    explainer = Explainer(_conv(), baselines=train, n_baselines=4)
    maps = explainer.attribute(images, [0, 1])
    assert seen == [128, 64]
    assert explainer.plan().samples_per_forward == 64 and explainer.plan().bound == "out of memory"
    assert torch.allclose(maps, expected)
    fixed = Explainer(_conv(), baselines=train, n_baselines=4, samples_per_forward=8)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        seen.clear()
        monkeypatch.setattr(
            attribution.AttributionMethod,
            "attribute",
            lambda self, m, w: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")),
        )
        fixed.attribute(images, [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_plan_uses_the_measured_peak_and_the_free_memory():
    plan = plan_batch(_conv(), (3, 32, 32), "cuda")
    assert plan.profile.peak_bytes is not None and plan.profile.peak_bytes > 0
    free, _ = torch.cuda.mem_get_info()
    per_sample = batch_sizing.WORKING_SET_FACTOR * plan.profile.peak_bytes
    assert plan.samples_per_forward * per_sample <= batch_sizing.CUDA_SHARE * free * 1.01
