"""Helpers for the Ray executor tests: a model that lets a test kill the Ray worker computing
with it, midway through a batch, from outside (SIGKILL, as an out-of-memory killer would)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from torch import Tensor, nn


class HoldOnce(nn.Module):
    """`inner`, except that the first forward pass anywhere (the marker file is created
    atomically) writes its process id to `marker` and waits there to be killed."""

    def __init__(self, inner: nn.Module, marker: str, hold_s: float = 300.0) -> None:
        super().__init__()
        self.inner, self.marker, self.hold_s = inner, marker, hold_s

    def forward(self, x: Tensor) -> Tensor:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner(x)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(self.hold_s)  # killed here
        return self.inner(x)


class Killer(threading.Thread):
    """Waits for `marker` to name a process, then SIGKILLs it; `killed` is its id. The wait is
    generous: on a loaded machine starting the actors alone takes a minute or more."""

    def __init__(self, marker: Path, timeout_s: float = 300.0) -> None:
        super().__init__(daemon=True)
        self.marker, self.timeout_s, self.killed = marker, timeout_s, None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            text = self.marker.read_text() if self.marker.exists() else ""
            if text:
                self.killed = int(text)
                os.kill(self.killed, signal.SIGKILL)
                return
            time.sleep(0.05)
