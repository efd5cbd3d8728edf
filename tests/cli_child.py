"""The `lvlmva` command in a child process of a forkserver that imported torch, the CLI and
the openai SDK once (tests/test_batch_cli.py): each run starts in well under a second instead
of paying for those imports again, and is a real process that a test can SIGKILL."""

from __future__ import annotations

import os
import sys

PRELOAD = [
    "torch", "torchvision", "sklearn.datasets", "captum.attr", "matplotlib.pyplot", "openai",
    "lvlmva.cli", "lvlmva.commands.align", "lvlmva.pipeline", "lvlmva.report",
    "lvlmva.vision.models", "lvlmva.vision.datasets", "lvlmva.engine.batch.client",
    "lvlmva.engine.batch.dispatcher",
]  # fmt: skip


def main(argv: list[str], log: str, env: dict[str, str]) -> None:
    """Run `lvlmva argv` with `env` added, its stdout and stderr going to `log`."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from lvlmva.cli import main as cli

    code = cli(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
