"""The Judge's verdict format: a strict-mode JSON schema and a parser whose error messages are
precise enough to send back to the model when it has to be asked again."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["VERDICTS", "VerdictValidationError", "parse_verdicts", "verdict_schema"]

VERDICTS = ("yes", "no")
_FENCE = re.compile(r"\A\s*```(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?[ \t]*```\s*\Z", re.S)


class VerdictValidationError(ValueError):
    """Judge output that is not a valid verdict object; `problems` lists every issue found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def _color_tuple(colors: Sequence[str]) -> tuple[str, ...]:
    colors = tuple(colors)
    if not colors:
        raise ValueError("need at least one colour")
    if len(set(colors)) != len(colors) or not all(isinstance(c, str) and c for c in colors):
        raise ValueError(f"colours must be distinct non-empty strings, got {list(colors)}")
    return colors


def verdict_schema(colors: Sequence[str]) -> dict[str, Any]:
    """JSON schema `{"output": [{"color": ..., "verdict": "yes"|"no"}, ...]}` with one entry per
    colour; usable as an OpenAI strict structured-output schema."""
    colors = _color_tuple(colors)
    return {
        "type": "object",
        "properties": {
            "output": {
                "type": "array",
                "minItems": len(colors),
                "maxItems": len(colors),
                "items": {
                    "type": "object",
                    "properties": {
                        "color": {"type": "string", "enum": list(colors)},
                        "verdict": {"type": "string", "enum": list(VERDICTS)},
                    },
                    "required": ["color", "verdict"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["output"],
        "additionalProperties": False,
    }


@lru_cache(maxsize=256)
def _validator(colors: tuple[str, ...]) -> Draft202012Validator:
    schema = verdict_schema(colors)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _strip_fence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group("body") if match else text


def _location(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def _exact(text: str, colors: tuple[str, ...]) -> dict[str, bool] | None:
    """The verdicts of a bare JSON object that is exactly right, else None. It accepts only
    what the schema accepts (one "output" key; one two-key entry per colour, each colour once,
    verdicts "yes" / "no"), without the schema validator, which costs about 30 times more."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return None
    if type(data) is not dict or len(data) != 1:
        return None
    entries = data.get("output")
    if type(entries) is not list or len(entries) != len(colors):
        return None
    out: dict[str, bool] = {}
    for entry in entries:
        if type(entry) is not dict or len(entry) != 2:
            return None
        color, verdict = entry.get("color"), entry.get("verdict")
        if type(color) is not str or color in out or type(verdict) is not str:
            return None
        if verdict not in VERDICTS:
            return None
        out[color] = verdict == "yes"
    return out if out.keys() == set(colors) else None


def parse_verdicts(text: str, colors: Sequence[str]) -> dict[str, bool]:
    """Parse and validate Judge output; returns colour -> True for "yes" (relevant).

    Accepts a bare JSON object or one wrapped in a ```json fence, nothing else. Raises
    `VerdictValidationError` listing invalid JSON, missing / unknown / duplicate colours and bad
    verdict values. An answer that is exactly right takes a fast path; anything else is
    validated against the schema, which explains every problem."""
    colors = _color_tuple(colors)
    exact = _exact(text, colors)
    if exact is not None:
        return exact
    body = _strip_fence(text or "")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise VerdictValidationError(
            [f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"]
        ) from None

    problems: list[str] = []
    allowed = ", ".join(colors)
    for error in sorted(_validator(colors).iter_errors(data), key=lambda e: list(e.path)):
        path = list(error.path)
        if error.validator in ("minItems", "maxItems"):
            continue  # reported below as missing / duplicate / unknown colours
        if error.validator == "enum" and path[-1:] == ["color"]:
            problems.append(
                f"unknown colour {error.instance!r} at {_location(path)}: use one of {allowed}"
            )
        elif error.validator == "enum" and path[-1:] == ["verdict"]:
            problems.append(
                f'bad verdict value {error.instance!r} at {_location(path)}: use "yes" or "no"'
            )
        else:
            problems.append(f"{_location(path)}: {error.message}")

    entries = data.get("output") if isinstance(data, dict) else None
    if isinstance(entries, list):
        named = [
            e["color"] for e in entries if isinstance(e, dict) and isinstance(e.get("color"), str)
        ]
        counts = Counter(named)
        for color, n in counts.items():
            if n > 1 and color in colors:
                problems.append(f"duplicate colour {color!r} ({n} entries): give each colour once")
        missing = [c for c in colors if c not in counts]
        if missing:
            noun = "colour" if len(missing) == 1 else "colours"
            problems.append(f"missing {noun} {', '.join(missing)}: give a verdict for every colour")

    if problems:
        raise VerdictValidationError(problems)
    return {entry["color"]: entry["verdict"] == "yes" for entry in entries}  # type: ignore[union-attr]
