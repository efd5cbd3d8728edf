"""The extension point for critic backends: one `CriticBackend` subclass per kind of critic, in
its own module, with one entry in `lvlmva.critics.CRITICS`.

A backend says what it is (`name`, `summary`, `describe`), which command-line options it adds
(`cli_options`, read back by `configure`), checks its endpoint before anything is trained or paid
for (`preflight`), and connects: `connect(settings)` gives the Critic and Judge `Provider`s and,
for critics that answer from ground truth (the simulation), a place to register it.
`CriticSession` then joins a connection with the engine, the cache and the price table.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from lvlmva.critics.settings import CriticSettings
from lvlmva.engine.types import Provider

__all__ = ["CliOption", "CriticBackend", "CriticConnection", "TruthSink"]


class TruthSink(Protocol):
    """Where a simulated critic learns the ground-truth spurious mask of an original image
    (keyed by the PNG bytes sent to it)."""

    def add(self, key: str | bytes, mask: object) -> None: ...


@dataclass(frozen=True)
class CliOption:
    """One command-line option of a backend: `argparse` arguments, and the settings field it
    fills (`None`: the backend reads it in `configure`). Backends that share a flag (e.g.
    `--base-url`) share one `CliOption` object, so the flag is added once."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument(*self.flags, **dict(self.kwargs))


@dataclass
class CriticConnection:
    """The providers of a connected backend and what must be closed after the run (the engine
    closes the providers themselves)."""

    critic: Provider
    judge: Provider
    truth: TruthSink | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        while self.closers:
            await self.closers.pop()()


class CriticBackend:
    """Base class of critic backends (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `--critic` help
    uses_llm: ClassVar[bool] = True  # False: no Critic & Judge calls (ground truth)
    answers_from_ground_truth: ClassVar[bool] = False  # needs the dataset's spurious masks
    cli_options: ClassVar[Sequence[CliOption]] = ()

    def configure(self, settings: CriticSettings, args: argparse.Namespace) -> CriticSettings:
        """Settings for this backend from the parsed command line (`settings` holds the flags
        every backend shares); raise `ConfigError` for a missing or bad option."""
        return settings

    def describe(self, settings: CriticSettings) -> str:
        """One line saying what critiques the run (printed first by the CLI)."""
        return f"Critic: {settings.critic_model} / Judge: {settings.judge_model} via {self.name}"

    def price_overrides(self, settings: CriticSettings) -> Mapping[str, Any]:
        """Model prices this backend knows better than the list prices (model -> ModelPrice)."""
        return {}

    async def preflight(self, settings: CriticSettings) -> None:
        """Check the endpoint before any training or paid call (default: nothing to check)."""

    async def connect(self, settings: CriticSettings) -> CriticConnection:
        raise NotImplementedError(f"the {self.name} critic makes no LVLM calls")
