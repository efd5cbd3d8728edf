"""How sure the model was of each verdict: P("no") per colour, read from the token
log-probabilities of a validated verdict answer (`no_probabilities`) or of a critique's
``Verdict for <colour>: yes|no`` lines (`stated_no_probabilities`).

A verdict answer is JSON, `{"output": [{"color": "red", "verdict": "no"}, ...]}`. For each
entry (or verdict line) the token where its value begins is found by character offset (the
tokens' texts concatenate to the answer), and the probability mass of that token and of its
alternatives (`top_logprobs`) is split into what would have begun "yes" and what would have
begun "no" (alternatives such as "n", " no" or '"no': what the token holds from the verdict's
offset on, quotes and spaces stripped). P("no") = mass(no) / (mass(no) + mass(yes)).

This is the answering model's own doubt about the word it wrote. For the Judge of a two-step
run it is the doubt about what the critique says; the Critic's verdict lines (the Critic
templates ask for them) and a fused answer carry the doubt of the model that saw the images,
which `preferred` puts first. A colour whose verdict token cannot be found, or whose
alternatives hold neither word, keeps its stated verdict (P = 0 or 1).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Mapping, Sequence

from lvlmva.engine.types import TokenLogprob

__all__ = [
    "json_verdict_offsets",
    "line_verdict_offsets",
    "no_probabilities",
    "preferred",
    "stated_no_probabilities",
]

_ENTRY = re.compile(r"\{[^{}]*\}")  # one flat {"color": ..., "verdict": ...} object
_VERDICT = re.compile(r'"verdict"\s*:\s*"(?P<value>[^"]*)"')
_COLOR = re.compile(r'"color"\s*:\s*(?P<value>"(?:[^"\\]|\\.)*")')
_LINE = re.compile(  # "Verdict for red: no", also with markdown emphasis around the parts
    r"(?im)^[ \t>*_-]*verdict for[ \t*_]+(?P<color>[^:\n*_]+?)[ \t*_]*:[ \t*_]*(?P<value>yes|no)\b"
)


def no_probabilities(
    text: str, tokens: Sequence[TokenLogprob] | None, verdicts: Mapping[str, bool]
) -> dict[str, float] | None:
    """P("no") per colour of `verdicts` (the validated verdicts of `text`) from `tokens`;
    None when no verdict's token could be read (no log-probabilities, or a mismatch)."""
    if not tokens:
        return None
    starts = _token_starts(tokens)
    out = {c: 0.0 if relevant else 1.0 for c, relevant in verdicts.items()}
    found = False
    for color, offset in json_verdict_offsets(text):
        p = _p_no(tokens, starts, offset, text) if color in out else None
        if p is not None:
            out[color], found = p, True
    return out if found else None


def stated_no_probabilities(
    critique: str, tokens: Sequence[TokenLogprob] | None, colors: Sequence[str]
) -> dict[str, tuple[bool, float]]:
    """(stated "no", P("no")) per colour of `colors` whose ``Verdict for <colour>:`` line in
    `critique` has a readable value token (the last such line of a colour counts)."""
    if not tokens:
        return {}
    starts, wanted = _token_starts(tokens), {c.lower(): c for c in colors}
    out = {}
    for written, offset in line_verdict_offsets(critique):
        color = wanted.get(written.lower())
        p = None if color is None else _p_no(tokens, starts, offset, critique)
        if p is not None:
            out[color] = (critique[offset : offset + 2].lower() == "no", p)
    return out


def line_verdict_offsets(text: str) -> list[tuple[str, int]]:
    """(colour as written, character offset of its value) of every verdict line of `text`."""
    return [(m.group("color").strip(), m.start("value")) for m in _LINE.finditer(text)]


def preferred(
    verdicts: Mapping[str, bool],
    judged: Mapping[str, float] | None,
    stated: Mapping[str, tuple[bool, float]],
) -> dict[str, float] | None:
    """P("no") per colour: the Critic's (`stated`) where its line says what the verdict says,
    else the Judge's (`judged`); None when neither gave one."""
    out = dict(judged) if judged is not None else {}
    for color, (said_no, p) in stated.items():
        if color in verdicts and said_no == (not verdicts[color]):
            out[color] = p
    if not out:
        return None
    return {c: out.get(c, 0.0 if relevant else 1.0) for c, relevant in verdicts.items()}


def _token_starts(tokens: Sequence[TokenLogprob]) -> list[int]:
    starts, at = [], 0
    for t in tokens:
        starts.append(at)
        at += len(t.token)
    return starts


def json_verdict_offsets(text: str) -> list[tuple[str, int]]:
    """(colour, character offset of its verdict value) of every JSON entry of `text`."""
    out = []
    for entry in _ENTRY.finditer(text):
        verdict, color = _VERDICT.search(entry.group()), _COLOR.search(entry.group())
        if verdict is None or color is None:
            continue
        try:
            name = json.loads(color.group("value"))
        except ValueError:
            continue
        out.append((name, entry.start() + verdict.start("value")))
    return out


def _p_no(
    tokens: Sequence[TokenLogprob], starts: Sequence[int], offset: int, text: str
) -> float | None:
    """P("no") at the token holding character `offset`, or None (not found, or no mass)."""
    i = bisect.bisect_right(starts, offset) - 1
    if i < 0:
        return None
    chosen, k = tokens[i], offset - starts[i]
    if k >= len(chosen.token) or text[starts[i] : starts[i] + len(chosen.token)] != chosen.token:
        return None  # the tokens do not spell the text here: do not guess
    head = chosen.token[:k]
    mass = {"yes": 0.0, "no": 0.0}
    seen: set[str] = set()
    for token, logprob in ((chosen.token, chosen.logprob), *chosen.top):
        if token in seen or not token.startswith(head):
            continue
        seen.add(token)
        word = _word(token[k:])
        if word is not None:
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["no"] / total if total > 0 else None


def _word(rest: str) -> str | None:
    """"yes" or "no" when `rest` (a token's text from the verdict's offset on) begins one."""
    piece = rest.strip().strip('"').strip().lower()
    if not piece:
        return None
    for word in ("yes", "no"):
        if word.startswith(piece) or piece.startswith(word):
            return word
    return None
