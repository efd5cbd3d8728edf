"""How many model samples one forward/backward pass of an explanation takes, per model, input
shape and device, sized from a probe of the model's activation memory.

An attribution is forward and backward passes over many samples (DeepLiftShap: an input and a
background per (image, background) pair, 50 per image with 25 backgrounds). Beyond a point a
bigger batch only costs. On a GPU the batch must fit the free memory. On the CPU the cost is
page faults, from two limits of glibc's malloc (the default allocator of CPython and PyTorch on
Linux):

- the mmap threshold: a block at least this large is mmap'ed and unmapped when freed, so it
  is faulted in afresh on every use. It starts at 128 KiB and rises to the size of every
  mmap'ed block freed, up to `CPU_REUSE_BYTES` (32 MiB, DEFAULT_MMAP_THRESHOLD_MAX); a block
  above that is always mmap'ed (measured: ResNet-18 at 64 px with 3,200 samples per pass had
  more system time than user time);
- the trim threshold, twice the mmap threshold: when a free leaves more than this unused at the
  top of the heap, glibc gives it back to the kernel, and the next pass faults it in again. It
  follows the mmap threshold, which in a process that has loaded its data has risen to 16 to
  24 MiB (measured with `malloc` probes in bench/explain.py's process), so it is 32 MiB or
  more. A pass whose working set exceeds it gives memory back whenever its tensors were the
  last on the heap (measured in bench/explain.py, one thread, the MLP on 28 px digits: at
  10,699 samples per pass, an estimated 370 MB, 3,500 to 16,000 minor faults in 20 of 30
  explain calls, system time up to 0.5 of user time; at 1,945 samples, 64 MiB, in 6 of 25;
  at 972, 32 MiB, in 2 of 25).

`plan_batch` runs one forward/backward of `PROBE_SAMPLES` samples, records per sample the
largest tensor a module outputs, the sum of all module outputs and, on CUDA, the peak memory
allocated, and sizes the batch:

- CPU: the largest activation within `CPU_REUSE_BYTES` ("reuse size"); the working set
  (`WORKING_SET_FACTOR` times the outputs) within `CPU_TRIM_BYTES` ("trim size", 32 MiB, also
  the L3 cache of our EPYC hosts), but this bound never cuts a pass below `MIN_TRIM_SAMPLES`:
  a model with more than 64 KiB of working set a sample (every convolutional net on images)
  needs its batch for the convolutions (measured, ResNet-18 at 64 px: 0.29 s an image at 64
  pairs a pass, 0.40 s at 8, 0.54 s at 4), and its compute-bound passes refault little (system
  time at most 0.03 of user time), so it keeps the reuse-size bound; and the working set within
  `RAM_SHARE` of the available memory ("memory");
- CUDA: `WORKING_SET_FACTOR` times the measured peak within `CUDA_SHARE` of the free memory;

and at most `MAX_SAMPLES` ("cap": beyond that a batch only adds latency). The CPU bounds are
sizes of the model alone, so its plan is the same in every run (the memory bound aside, which
binds only for a model whose pass needs a quarter of the RAM). Plans are remembered per
(architecture, input shape, device), so a retrained model of the same architecture reuses its
original's plan; `forget_plans` clears them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lvlmva.vision.modes import eval_mode

__all__ = [
    "CPU_REUSE_BYTES",
    "CPU_TRIM_BYTES",
    "MAX_SAMPLES",
    "MIN_TRIM_SAMPLES",
    "ActivationProfile",
    "BatchPlan",
    "architecture_key",
    "forget_plans",
    "plan_batch",
    "profile_activations",
    "shrink_plan",
]

PROBE_SAMPLES = 2
CPU_REUSE_BYTES = 32 << 20  # glibc: 4 * 1024 * 1024 * sizeof(long), DEFAULT_MMAP_THRESHOLD_MAX
# glibc: the trim threshold is twice the mmap threshold, which loading the data raises to 16 MiB
CPU_TRIM_BYTES = 32 << 20
# below this a pass's fixed cost shows (the MLP at 28 px: 2,300 images/s at 972 to 5,349
# samples a pass, 1,740 at 486)
MIN_TRIM_SAMPLES = 512
RAM_SHARE = 0.25
CUDA_SHARE = 0.5
# autograd's saved outputs, the gradients of the backward pass, and captum's copies of every
# nonlinearity's input and output (DeepLift) or of the scaled inputs (the gradient methods)
WORKING_SET_FACTOR = 3
MAX_SAMPLES = 16384


@dataclass(frozen=True)
class ActivationProfile:
    """Memory of one forward/backward pass, per sample: `largest_bytes` is the largest tensor a
    module outputs, `output_bytes` the sum of all module outputs (what autograd keeps for the
    backward pass), `peak_bytes` the peak allocated above the memory in use before (CUDA
    only, else None)."""

    largest_bytes: int
    output_bytes: int
    peak_bytes: int | None


@dataclass(frozen=True)
class BatchPlan:
    """`samples_per_forward` model samples per forward/backward pass on `device`, derived from
    `profile` and a memory budget of `budget_bytes`; `bound` says what set it ("reuse size",
    "trim size", "memory", "cap" or "out of memory" after a CUDA out-of-memory error)."""

    samples_per_forward: int
    device: str
    profile: ActivationProfile
    budget_bytes: int
    bound: str


_PLANS: dict[tuple, BatchPlan] = {}
_LOCK = threading.Lock()


def architecture_key(model: nn.Module) -> str:
    """A digest of `model`'s module tree, parameter shapes and dtypes (not the weights)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__qualname__};".encode())
        for pname, p in module.named_parameters(recurse=False):
            digest.update(f"{pname}{tuple(p.shape)}{p.dtype};".encode())
        for bname, b in module.named_buffers(recurse=False):
            digest.update(f"{bname}{tuple(b.shape)}{b.dtype};".encode())
    return digest.hexdigest()


def _plan_key(model: nn.Module, sample_shape: Sequence[int], device: torch.device) -> tuple:
    return architecture_key(model), tuple(sample_shape), str(device)


def plan_batch(
    model: nn.Module, sample_shape: Sequence[int], device: str | torch.device
) -> BatchPlan:
    """The remembered plan for (`model`'s architecture, `sample_shape`, `device`), or a new one
    from one `profile_activations` probe."""
    device = torch.device(device)
    key = _plan_key(model, sample_shape, device)
    with _LOCK:
        plan = _PLANS.get(key)
        if plan is None:
            profile = profile_activations(model, sample_shape, device)
            plan = _plan_from(profile, device)
            _PLANS[key] = plan
    return plan


def shrink_plan(
    model: nn.Module, sample_shape: Sequence[int], device: str | torch.device, plan: BatchPlan
) -> BatchPlan:
    """Half of `plan`'s batch (at least 1), remembered in its place: after running out of
    memory with it."""
    device = torch.device(device)
    smaller = BatchPlan(
        max(1, plan.samples_per_forward // 2),
        plan.device,
        plan.profile,
        plan.budget_bytes,
        "out of memory",
    )
    with _LOCK:
        _PLANS[_plan_key(model, sample_shape, device)] = smaller
    return smaller


def forget_plans() -> None:
    """Drop every remembered plan (the next `plan_batch` probes again)."""
    with _LOCK:
        _PLANS.clear()


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def profile_activations(
    model: nn.Module, sample_shape: Sequence[int], device: str | torch.device
) -> ActivationProfile:
    """Run one forward/backward (gradient of the summed outputs with respect to the input) of
    `PROBE_SAMPLES` zero images through `model` in eval mode and measure its memory per
    sample. On CUDA the peak-memory counter is reset for the probe."""
    device = torch.device(device)
    sizes: list[int] = []

    def record(_module, _inputs, output) -> None:
        sizes.extend(t.numel() * t.element_size() for t in _tensors(output))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    x = torch.zeros((PROBE_SAMPLES, *sample_shape), device=device, requires_grad=True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        with eval_mode(model), torch.enable_grad():
            out = model(x)
            torch.autograd.grad(out.float().sum(), x)
    finally:
        for handle in handles:
            handle.remove()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = -(-(torch.cuda.max_memory_allocated(device) - before) // PROBE_SAMPLES)
    input_bytes = x.numel() * x.element_size()
    sizes.append(input_bytes)
    return ActivationProfile(
        largest_bytes=-(-max(sizes) // PROBE_SAMPLES),
        output_bytes=-(-sum(sizes) // PROBE_SAMPLES),
        peak_bytes=peak,
    )


def available_memory_bytes() -> int:
    """The memory the kernel says is available (MemAvailable; free pages where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _plan_from(profile: ActivationProfile, device: torch.device) -> BatchPlan:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(CUDA_SHARE * free)
        per_sample = WORKING_SET_FACTOR * max(profile.peak_bytes or 0, profile.output_bytes)
        candidates = {"memory": budget // max(per_sample, 1)}
    else:
        budget = int(RAM_SHARE * available_memory_bytes())
        working_set = max(WORKING_SET_FACTOR * profile.output_bytes, 1)
        candidates = {
            "reuse size": CPU_REUSE_BYTES // max(profile.largest_bytes, 1),
            "trim size": max(CPU_TRIM_BYTES // working_set, MIN_TRIM_SAMPLES),
            "memory": budget // working_set,
        }
    candidates["cap"] = MAX_SAMPLES
    bound = min(candidates, key=candidates.get)
    return BatchPlan(max(1, candidates[bound]), str(device), profile, budget, bound)
