"""Prompt templates and task specs, kept as data files and versioned by SHA-256.

A *prompt family* is six templates: `critic_system`, `critic_user`, `judge_system`,
`judge_user`, `fused_system`, `fused_user`. They live in `templates/` as
`<family>.<role>.txt`; a family that lacks a role falls back to `generic.<role>.txt`, so a task
family only overrides what is specific to it (the Critic's framing of the domain). Templates use
`string.Template` placeholders (`$name`; `$$` for a literal dollar sign).

Variables the templates are rendered with:

- Critic / fused: `class_name`, `class_description`, `task_notes` (from `TaskSpec.variables`),
  and `n_clusters`, `colors` (", "-joined) and `image_names` added by the engine.
- Judge: `critique`, `colors`, `n_clusters`.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from lvlmva.errors import ConfigError
from lvlmva.prompts.spec import ClassSpec, TaskSpec, builtin_specs, load_spec, parse_spec

__all__ = [
    "FAMILIES",
    "ROLES",
    "ClassSpec",
    "PromptSet",
    "PromptTemplate",
    "TaskSpec",
    "builtin_specs",
    "load_prompt_set",
    "load_spec",
    "parse_spec",
]

ROLES = (
    "critic_system",
    "critic_user",
    "judge_system",
    "judge_user",
    "fused_system",
    "fused_user",
)
GENERIC = "generic"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt template: `render(variables)` fills its `$name` placeholders."""

    name: str
    text: str

    def __post_init__(self) -> None:
        template = string.Template(self.text)
        if not template.is_valid():
            raise ConfigError(
                f"prompt template {self.name!r} has a malformed placeholder; write $name or "
                "${name}, and $$ for a literal dollar sign"
            )

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @cached_property
    def variables(self) -> frozenset[str]:
        """The placeholder names the template needs."""
        return frozenset(string.Template(self.text).get_identifiers())

    def render(self, variables: Mapping[str, object]) -> str:
        """The text with every placeholder replaced; a missing variable raises ConfigError."""
        missing = sorted(self.variables.difference(variables))
        if missing:
            raise ConfigError(
                f"prompt template {self.name!r} needs the variable(s) {', '.join(missing)}, "
                f"which were not given (given: {', '.join(sorted(variables)) or 'none'})"
            )
        return string.Template(self.text).substitute({k: str(v) for k, v in variables.items()})


@dataclass(frozen=True)
class PromptSet:
    """The six templates of one prompt family; `sha256` versions them all together."""

    family: str
    critic_system: PromptTemplate
    critic_user: PromptTemplate
    judge_system: PromptTemplate
    judge_user: PromptTemplate
    fused_system: PromptTemplate
    fused_user: PromptTemplate
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # role -> file

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for role in ROLES:
            template: PromptTemplate = getattr(self, role)
            digest.update(f"{role}\0{template.sha256}\0".encode())
        return digest.hexdigest()

    def templates(self) -> dict[str, PromptTemplate]:
        return {role: getattr(self, role) for role in ROLES}

    @classmethod
    def from_texts(cls, family: str, texts: Mapping[str, str]) -> PromptSet:
        """A prompt set from one text per role (all six `ROLES`), e.g. for tests and benchmarks."""
        missing = [role for role in ROLES if role not in texts]
        if missing:
            raise ConfigError(f"prompt set {family!r} has no {', '.join(missing)} template")
        templates = {role: PromptTemplate(f"{family}.{role}", texts[role]) for role in ROLES}
        return cls(family=family, **templates)


def _builtin_dir() -> Path:
    return Path(str(resources.files("lvlmva.prompts").joinpath("templates")))


def _families_in(directory: Path) -> set[str]:
    names = set()
    for path in directory.glob("*.txt"):
        family, _, role = path.stem.rpartition(".")
        if family and role in ROLES:
            names.add(family)
    return names


FAMILIES: tuple[str, ...] = tuple(sorted(_families_in(_builtin_dir())))
"""The built-in prompt families."""


def load_prompt_set(family: str, *, directory: str | Path | None = None) -> PromptSet:
    """The prompt family `family`: the built-in one, or the one in `directory` (files named
    `<family>.<role>.txt`; roles missing there come from the built-in `generic` family)."""
    builtin = _builtin_dir()
    search = [Path(directory)] if directory is not None else []
    if directory is not None and not Path(directory).is_dir():
        raise ConfigError(f"prompt template folder {directory} does not exist")
    known = set(FAMILIES).union(*(_families_in(d) for d in search))
    if family not in known:
        raise ConfigError(
            f"unknown prompt family {family!r}: choose one of {', '.join(sorted(known))}"
        )
    templates: dict[str, PromptTemplate] = {}
    sources: dict[str, str] = {}
    for role in ROLES:
        candidates = [d / f"{family}.{role}.txt" for d in [*search, builtin]]
        candidates.append(builtin / f"{GENERIC}.{role}.txt")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ConfigError(f"prompt family {family!r} has no {role} template")
        templates[role] = PromptTemplate(f"{path.stem}", path.read_text(encoding="utf-8"))
        sources[role] = str(path)
    return PromptSet(family=family, sources=sources, **templates)
