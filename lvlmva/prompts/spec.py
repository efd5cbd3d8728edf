"""Task specs: what a domain expert says once per class, as a YAML or TOML file.

A spec file (``.yaml``/``.yml`` read as YAML, ``.toml`` as TOML) has these keys, and no others::

    task: skin-lesions          # the task's name (default: the file name without extension)
    family: skin-lesions        # prompt family: generic, decoy-digits, skin-lesions,
                                #   knee-radiographs (default: generic)
    notes: |                    # known spurious features, told to the Critic (text, or a
      Adhesive bandages ...     #   list of texts; optional)
    classes:                    # every class of the data, each with a description
      - name: benign
        description: A small, round, symmetric lesion of one even colour ...
      - name: malignant
        description: ...

``classes`` may also be a mapping ``{class name: description}``. In TOML, write
``[[classes]]`` tables with ``name`` and ``description``. Numbers used as class names (``0``)
are read as text (``"0"``). Built-in specs: ``load_spec("decoy-digits")``, ``"skin-lesions"``,
``"knee-radiographs"``. See docs/specs.md.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lvlmva.errors import ConfigError

__all__ = ["ClassSpec", "TaskSpec", "builtin_specs", "load_spec", "parse_spec"]

TOP_KEYS = ("task", "family", "notes", "classes")
CLASS_KEYS = ("name", "description")
NO_NOTES = "No spurious features are known for this task."


@dataclass(frozen=True)
class ClassSpec:
    name: str
    description: str


@dataclass(frozen=True)
class TaskSpec:
    """A validated task spec; `sha256` versions its content (independent of file format)."""

    task: str
    family: str
    classes: tuple[ClassSpec, ...]
    notes: str = ""
    source: str = "<memory>"

    @cached_property
    def sha256(self) -> str:
        canonical = {
            "task": self.task,
            "family": self.family,
            "notes": self.notes,
            "classes": [[c.name, c.description] for c in self.classes],
        }
        text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def description(self, class_name: str) -> str:
        for spec in self.classes:
            if spec.name == class_name:
                return spec.description
        raise ConfigError(
            f"class {class_name!r} is not in the task spec {self.source} (classes: "
            f"{', '.join(self.class_names)}); add it with a description"
        )

    def variables(self, class_name: str) -> dict[str, str]:
        """Template variables for a sample of `class_name`."""
        return {
            "class_name": class_name,
            "class_description": self.description(class_name),
            "task_notes": self.notes or NO_NOTES,
        }

    def check_classes(self, class_names: Iterable[str]) -> None:
        """ConfigError unless the spec describes exactly the data's classes."""
        data = [str(c) for c in class_names]
        missing = [c for c in data if c not in self.class_names]
        unknown = [c for c in self.class_names if c not in data]
        problems = []
        if missing:
            problems.append(f"the data's class(es) {', '.join(map(repr, missing))} have no entry")
        if unknown:
            problems.append(f"class(es) {', '.join(map(repr, unknown))} are not in the data")
        if problems:
            raise ConfigError(
                f"task spec {self.source} does not match the data: {'; '.join(problems)} "
                f"(data classes: {', '.join(data)}); edit the spec's classes"
            )


def _specs_dir() -> Path:
    return Path(str(resources.files("lvlmva.prompts").joinpath("specs")))


def builtin_specs() -> tuple[str, ...]:
    """Names of the specs shipped with lvlm-va."""
    return tuple(sorted(p.stem for p in _specs_dir().glob("*.yaml")))


def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\")) or Path(value).suffix.lower() in (
        ".yaml",
        ".yml",
        ".toml",
    )


def load_spec(name_or_path: str | Path) -> TaskSpec:
    """A built-in spec by name, or a spec file (YAML or TOML, chosen by its extension)."""
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path)
    else:
        path = _specs_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown task spec {name_or_path!r}: give a spec file path or one of "
                f"{', '.join(builtin_specs())}"
            )
    if not path.is_file():
        raise ConfigError(f"task spec file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read task spec file {path}: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"task spec file {path}: unknown extension {suffix or '(none)'}; use .yaml, "
                ".yml or .toml"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"task spec file {path} is not valid {suffix[1:].upper()}: {first}"
        ) from None
    return parse_spec(data, source=str(path), default_task=path.stem)


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where} must be text, got {value!r}")
    if isinstance(value, int | float | str):
        return str(value).strip()
    raise ConfigError(f"{where} must be text, got a {type(value).__name__}")


def _unwrap(text: str) -> str:
    """Join hard-wrapped lines into paragraphs; keep blank lines and list items."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        starts_item = line[:2] in ("- ", "* ")
        if line and lines and lines[-1] and not starts_item:
            lines[-1] = f"{lines[-1]} {line}"
        else:
            lines.append(line)
    return "\n".join(lines).strip()


def _notes(value: Any, source: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        items = [" ".join(_text(v, f"{source}: notes[{i}]").split()) for i, v in enumerate(value)]
        return "\n".join(f"- {item}" for item in items if item)
    return _unwrap(_text(value, f"{source}: notes"))


def _class_entries(value: Any, source: str) -> list[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return list(value.items())
    if not isinstance(value, list):
        raise ConfigError(
            f"task spec {source}: 'classes' must be a list of {{name, description}} entries "
            "or a mapping of class name to description"
        )
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"task spec {source}: classes[{i}] must have 'name' and 'description', got {item!r}"
            )
        unknown = sorted(set(map(str, item)) - set(CLASS_KEYS))
        if unknown:
            raise ConfigError(
                f"task spec {source}: classes[{i}] has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(CLASS_KEYS)}"
            )
        if "name" not in item:
            raise ConfigError(f"task spec {source}: classes[{i}] has no 'name'")
        entries.append((item["name"], item.get("description")))
    return entries


def parse_spec(data: Any, *, source: str = "<memory>", default_task: str = "task") -> TaskSpec:
    """Validate the parsed content of a spec file (a mapping) into a `TaskSpec`."""
    from lvlmva.prompts import FAMILIES

    if not isinstance(data, Mapping):
        raise ConfigError(f"task spec {source} must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(
            f"task spec {source} has unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(TOP_KEYS)}"
        )
    task = _text(data.get("task", default_task), f"{source}: task") or default_task
    family = _text(data.get("family", "generic"), f"{source}: family")
    if family not in FAMILIES:
        raise ConfigError(
            f"task spec {source}: unknown prompt family {family!r}; choose one of "
            f"{', '.join(FAMILIES)}"
        )
    if "classes" not in data or not data["classes"]:
        raise ConfigError(f"task spec {source} lists no classes; add a 'classes' section")
    classes: list[ClassSpec] = []
    for name_value, description_value in _class_entries(data["classes"], source):
        name = _text(name_value, f"{source}: a class name")
        if not name:
            raise ConfigError(f"task spec {source}: a class has an empty name")
        if description_value is None or (
            isinstance(description_value, str) and not description_value.strip()
        ):
            raise ConfigError(
                f"task spec {source}: class {name!r} has no description; say what a sample of "
                "this class looks like"
            )
        description = _text(description_value, f"{source}: description of class {name!r}")
        if any(c.name == name for c in classes):
            raise ConfigError(f"task spec {source}: class {name!r} is listed twice")
        classes.append(ClassSpec(name, " ".join(description.split())))
    return TaskSpec(
        task=task,
        family=family,
        classes=tuple(classes),
        notes=_notes(data.get("notes"), source),
        source=source,
    )
