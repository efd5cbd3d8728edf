"""How sure the model was of each verdict: P("no") per colour, read from the token
log-probabilities of a validated verdict answer.

A verdict answer is JSON, `{"output": [{"color": "red", "verdict": "no"}, ...]}`. For each
entry the token where its verdict value begins is found by character offset (the tokens'
texts concatenate to the answer), and the probability mass of that token and of its
alternatives (`top_logprobs`) is split into what would have begun "yes" and what would have
begun "no" (alternatives such as "n", " no" or '"no': what the token holds from the verdict's
offset on, quotes and spaces stripped). P("no") = mass(no) / (mass(no) + mass(yes)).

This is the answering model's own doubt about the word it wrote. For the Judge of a two-step
run it is the doubt about what the critique says, which carries the Critic's doubt only where
the critique voices it; for a fused request (the model sees the images) it is the doubt about
the image itself. A colour whose verdict token cannot be found, or whose alternatives hold
neither word, keeps its stated verdict (P = 0 or 1).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Mapping, Sequence

from lvlmva.engine.types import TokenLogprob

__all__ = ["no_probabilities"]

_ENTRY = re.compile(r"\{[^{}]*\}")  # one flat {"color": ..., "verdict": ...} object
_VERDICT = re.compile(r'"verdict"\s*:\s*"(?P<value>[^"]*)"')
_COLOR = re.compile(r'"color"\s*:\s*(?P<value>"(?:[^"\\]|\\.)*")')


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
    for color, offset in _verdict_offsets(text):
        p = _p_no(tokens, starts, offset, text) if color in out else None
        if p is not None:
            out[color], found = p, True
    return out if found else None


def _token_starts(tokens: Sequence[TokenLogprob]) -> list[int]:
    starts, at = [], 0
    for t in tokens:
        starts.append(at)
        at += len(t.token)
    return starts


def _verdict_offsets(text: str) -> list[tuple[str, int]]:
    """(colour, character offset of its verdict value) of every entry of `text`."""
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
