"""Seeded draws that leave the caller's random state as it was.

`torch.manual_seed` seeds the CPU generator and every CUDA device's (queued until CUDA starts,
so a caller's own seed queued earlier is overwritten), and `torch.random.fork_rng` restores only
the devices it is given. `seeded(seed, device)` seeds exactly what the draws use, the CPU and
`device` (a CUDA device: its index, or the current device when it has none), and restores
both; no other device's generator is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["cuda_devices", "seeded"]


def cuda_devices(device: torch.device | str | None) -> list[int]:
    """The CUDA device index `device` draws on (none for another device type)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block, the CPU's draws (and `device`'s) come from `seed`; afterwards the
    caller's random state of both is back. On MPS the device's generator is seeded too (and,
    as torch offers no fork of it, not restored)."""
    devices = cuda_devices(device)
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        if device is not None and torch.device(device).type == "mps":
            torch.mps.manual_seed(seed)
        yield
