"""verdict_schema / parse_verdicts: strict-mode schema and precise re-ask messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from lvlmva.engine.validation import VerdictValidationError, parse_verdicts, verdict_schema

COLORS = ("red", "blue", "green")


def doc(*pairs):
    return json.dumps({"output": [{"color": c, "verdict": v} for c, v in pairs]})


def test_schema_is_valid_and_strict_mode_shaped():
    schema = verdict_schema(COLORS)
    Draft202012Validator.check_schema(schema)
    item = schema["properties"]["output"]["items"]
    assert schema["additionalProperties"] is False and item["additionalProperties"] is False
    assert schema["required"] == ["output"] and item["required"] == ["color", "verdict"]
    assert item["properties"]["color"]["enum"] == list(COLORS)
    assert item["properties"]["verdict"]["enum"] == ["yes", "no"]
    out = schema["properties"]["output"]
    assert out["minItems"] == out["maxItems"] == 3


def test_valid_output_parses():
    text = doc(("blue", "no"), ("red", "yes"), ("green", "no"))
    assert parse_verdicts(text, COLORS) == {"red": True, "blue": False, "green": False}


def test_json_code_fence_is_accepted():
    text = "```json\n" + doc(("red", "yes"), ("blue", "no"), ("green", "yes")) + "\n```"
    assert parse_verdicts(text, COLORS)["green"] is True
    assert parse_verdicts(
        "  ```\n" + doc(("red", "no"), ("blue", "no"), ("green", "no")) + "```\n", COLORS
    )


@pytest.mark.parametrize(
    "text",
    [
        "Here you go: " + doc(("red", "yes"), ("blue", "no"), ("green", "no")),
        doc(("red", "yes"), ("blue", "no"), ("green", "no")) + " hope this helps",
        "",
        "{'output': []}",
    ],
)
def test_anything_but_json_or_a_fence_is_invalid_json(text):
    with pytest.raises(VerdictValidationError, match="invalid JSON"):
        parse_verdicts(text, COLORS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (doc(("red", "yes"), ("blue", "no")), "missing colour green"),
        (doc(("red", "yes")), "missing colours blue, green"),
        (
            doc(("red", "yes"), ("blue", "no"), ("green", "no"), ("pink", "no")),
            "unknown colour 'pink'",
        ),
        (
            doc(("red", "yes"), ("red", "no"), ("blue", "no"), ("green", "no")),
            "duplicate colour 'red'",
        ),
        (doc(("red", "maybe"), ("blue", "no"), ("green", "no")), "bad verdict value 'maybe'"),
        (doc(("red", True), ("blue", "no"), ("green", "no")), "bad verdict value True"),
        (json.dumps({"verdicts": []}), "'output' is a required property"),
        (json.dumps([1, 2]), "is not of type 'object'"),
        (
            json.dumps({"output": [{"color": "red", "verdict": "yes", "why": "x"}]}),
            "Additional properties",
        ),
    ],
)
def test_errors_name_the_problem(text, message):
    with pytest.raises(VerdictValidationError) as info:
        parse_verdicts(text, COLORS)
    assert message in str(info.value)


def test_all_problems_are_reported_together():
    text = doc(("red", "maybe"), ("pink", "no"))
    with pytest.raises(VerdictValidationError) as info:
        parse_verdicts(text, COLORS)
    text = str(info.value)
    assert "bad verdict value 'maybe'" in text
    assert "unknown colour 'pink'" in text
    assert "missing colours blue, green" in text
    assert len(info.value.problems) == 3


def test_bad_colour_sets_are_rejected():
    with pytest.raises(ValueError):
        verdict_schema(("red", "red"))
    with pytest.raises(ValueError):
        verdict_schema(())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["red", "blue", "green", "pink"]), max_size=5),
    st.lists(st.sampled_from(["yes", "no", "maybe"]), min_size=5, max_size=5),
)
def test_parse_accepts_exactly_what_the_schema_accepts(colors_out, verdicts):
    data = {
        "output": [{"color": c, "verdict": v} for c, v in zip(colors_out, verdicts, strict=False)]
    }
    schema_ok = Draft202012Validator(verdict_schema(COLORS)).is_valid(data)
    complete = sorted(colors_out) == sorted(COLORS)
    try:
        result = parse_verdicts(json.dumps(data), COLORS)
    except VerdictValidationError:
        assert not (schema_ok and complete)
    else:
        assert schema_ok and complete
        assert result == {c: v == "yes" for c, v in zip(colors_out, verdicts, strict=False)}


def _defect(data, kind, k):
    """`data` (a valid answer) with one defect of `kind` at entry `k`."""
    entries = data["output"]
    k %= len(entries)
    if kind == "entry key":
        entries[k]["why"] = "because"
    elif kind == "top key":
        data["note"] = 1
    elif kind == "duplicate":
        entries.append(dict(entries[k]))
    elif kind == "missing":
        del entries[k]
    elif kind == "swap":  # a duplicate colour in place of another: the count stays right
        entries[k]["color"] = entries[(k + 1) % len(entries)]["color"]
    elif kind in ("verdict", "colour"):
        field = "verdict" if kind == "verdict" else "color"
        entries[k][field] = {"verdict": True, "colour": "pink"}[kind]
    elif kind == "case":
        entries[k]["verdict"] = entries[k]["verdict"].upper()
    elif kind == "not a list":
        data["output"] = {"entries": entries}
    elif kind == "number":
        entries[k]["color"] = 3
    elif kind == "list":
        entries[k]["color"] = [entries[k]["color"]]
    return data


@settings(max_examples=200, deadline=None)
@given(
    st.permutations(COLORS),
    st.lists(st.sampled_from(["yes", "no"]), min_size=3, max_size=3),
    st.sampled_from(
        [None, "entry key", "top key", "duplicate", "missing", "swap", "verdict", "colour",
         "case", "not a list", "number", "list"]
    ),
    st.integers(0, 3),
    st.sampled_from(["{}", "```json\n{}\n```", " {} ", "{}x", "[{}]"]),
)  # fmt: skip
def test_the_fast_path_answers_exactly_as_the_schema_path(colors, verdicts, kind, k, frame):
    """The same outcome (verdicts, or the same error message) with and without the fast path."""
    from lvlmva.engine import validation

    data = {"output": [{"color": c, "verdict": v} for c, v in zip(colors, verdicts, strict=True)]}
    text = frame.replace("{}", json.dumps(_defect(data, kind, k) if kind else data))

    def outcome():
        try:
            return validation.parse_verdicts(text, COLORS)
        except VerdictValidationError as exc:
            return str(exc)

    fast = outcome()
    original = validation._exact
    validation._exact = lambda text, colors: None
    try:
        assert outcome() == fast
    finally:
        validation._exact = original
