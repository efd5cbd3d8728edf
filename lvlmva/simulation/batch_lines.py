"""The lines of a batch input file, checked the way a batch checks them while `validating`.

Sources: `BatchRequestInput` (openai/openai-openapi, 2025-03-21 branch: custom_id unique per
batch, method "POST" only, url, body) and the batch error codes the API reports in
`errors.data` (see `batch_api`): invalid_json_line ("This line is not parseable as valid
JSON."), missing_required_parameter, url_mismatch, duplicate_custom_id, empty_file,
too_many_tasks. Each error carries the 1-based line number, as `BatchError.line` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchLine", "batch_error", "json_lines", "parse_batch_lines"]


@dataclass(frozen=True)
class BatchLine:
    """One well-formed request line: its 1-based line number, custom_id and body."""

    number: int
    custom_id: str
    body: Mapping[str, Any]


def batch_error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    """A `BatchError` object."""
    return {"code": code, "message": message, "param": param, "line": line}


def json_lines(content: bytes) -> Iterator[tuple[int, bytes, Any]]:
    """(1-based line number, raw bytes, parsed JSON or None) of each non-blank line."""
    for number, raw in enumerate(content.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        yield number, raw, obj


def _line_problem(obj: Mapping[str, Any], endpoint: str, seen: set[str]) -> dict | None:
    for key in ("custom_id", "method", "url", "body"):
        if key not in obj:
            return batch_error(
                "missing_required_parameter", f"Missing required parameter: '{key}'.", param=key
            )
    if not isinstance(obj["custom_id"], str):
        return batch_error("invalid_value", "custom_id must be a string.", param="custom_id")
    if obj["method"] != "POST":
        return batch_error("invalid_value", "Only the POST method is supported.", param="method")
    if obj["url"] != endpoint:
        return batch_error(
            "url_mismatch",
            f"The url of this request ({obj['url']!r}) does not match the batch's endpoint "
            f"({endpoint!r}).",
            param="url",
        )
    if obj["custom_id"] in seen:
        return batch_error(
            "duplicate_custom_id",
            f"The custom_id {obj['custom_id']!r} is used by another request in this file; "
            "custom_id must be unique for each request in a batch.",
            param="custom_id",
        )
    if not isinstance(obj["body"], dict):
        return batch_error("invalid_value", "body must be a JSON object.", param="body")
    return None


def parse_batch_lines(
    content: bytes, endpoint: str, max_lines: int
) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """The well-formed lines of `content`, and every problem found (BatchError dicts). Blank
    lines are skipped; a file with problems fails as a whole."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [batch_error("invalid_file_format", "The input file is not UTF-8 text.")]
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, _, obj in json_lines(content):
        if not isinstance(obj, dict):
            message = "This line is not parseable as valid JSON."
            errors.append(batch_error("invalid_json_line", message, number))
            continue
        problem = _line_problem(obj, endpoint, seen)
        if problem is not None:
            errors.append({**problem, "line": number})
            continue
        seen.add(obj["custom_id"])
        lines.append(BatchLine(number, obj["custom_id"], obj["body"]))
    if not lines and not errors:
        errors.append(batch_error("empty_file", "The batch input file is empty."))
    if len(lines) > max_lines:
        errors.append(
            batch_error(
                "too_many_tasks",
                f"The batch input file has {len(lines)} requests; a batch takes at most "
                f"{max_lines}.",
            )
        )
    return lines, errors
