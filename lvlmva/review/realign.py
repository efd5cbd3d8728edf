"""Re-aligning from the review app: the `lvlmva align --critique RUN` command for a run, and the
hook that runs it in a child process (the review server itself never loads torch)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from lvlmva.errors import DataError
from lvlmva.runs import CritiqueRun

__all__ = ["SubprocessRealign", "realign_argv"]

ALIGNED_DIR = "aligned"


def realign_argv(run: CritiqueRun, out: str | Path | None = None) -> list[str]:
    """The command that aligns the run's model from its reviewed verdicts (`lvlmva align
    --critique RUN --masks RULE --out DIR`; default DIR: RUN/aligned)."""
    root = run.root.resolve()
    return ["lvlmva", "align", "--critique", str(root), "--masks", run.manifest.masks,
            "--out", str(out or root / ALIGNED_DIR)]


class SubprocessRealign:
    """The review app's re-align hook: runs `realign_argv` (into `RUN/aligned/<time>/`) with
    this Python, one at a time, and answers with the command's before/after table."""

    def __init__(self, extra_args: tuple[str, ...] = ("--quiet",)) -> None:
        self.extra_args = extra_args
        self._running = asyncio.Lock()

    async def __call__(self, run: CritiqueRun) -> str:
        if self._running.locked():
            raise DataError("a re-align is already running; wait for it to finish")
        async with self._running:
            out = run.root.resolve() / ALIGNED_DIR / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            argv = [sys.executable, "-m", "lvlmva.cli", *realign_argv(run, out)[1:],
                    *self.extra_args]
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            stdout, stderr = await process.communicate()
        if process.returncode != 0:
            lines = stderr.decode(errors="replace").strip().splitlines() or ["no output"]
            raise DataError(f"re-align failed (exit {process.returncode}): {lines[-1]}")
        table = stdout.decode(errors="replace").strip().splitlines()
        return "\n".join([f"aligned into {out}", *table[-7:]])
