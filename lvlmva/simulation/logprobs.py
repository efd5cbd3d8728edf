"""Token log-probabilities of simulated answers, and their wire form.

The simulation has no tokenizer: an answer is cut into words, digit runs, white space and
runs of punctuation, so that a verdict value ("yes" / "no") is a token of its own, as it is
for OpenAI's tokenizers. Every token is certain (log-probability 0, no other alternative)
except the verdict values given a P("no") (found where the engine looks for them,
`lvlmva.engine.confidence`): there the chosen word gets log P(chosen) and the other word the
rest. What P("no") the simulated LVLM reports is its business
(`lvlmva.simulation.simulator`); here it is only written down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lvlmva.engine.confidence import json_verdict_offsets, line_verdict_offsets
from lvlmva.engine.types import TokenLogprob

__all__ = ["answer_logprobs", "tokens_within", "wire_logprobs"]

_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^\sA-Za-z0-9]+")
_FLOOR = 1e-6  # no word is impossible: log 0 has no wire form


def answer_logprobs(
    text: str, p_no: Mapping[str, float] | None, top: int
) -> tuple[TokenLogprob, ...]:
    """The tokens of `text`; the verdict value of each colour in `p_no` (a JSON entry's, or a
    critique's ``Verdict for <colour>:`` line's) gets P("no") = `p_no[colour]`, every other
    token is certain; at most `top` alternatives are listed per token."""
    graded = {}
    found = json_verdict_offsets(text) + line_verdict_offsets(text)
    for color, offset in found if p_no is not None else ():
        if color in p_no:
            graded[offset] = min(max(float(p_no[color]), _FLOOR), 1 - _FLOOR)
    out = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        p = graded.get(match.start())
        if p is None:
            out.append(TokenLogprob(token, 0.0, ((token, 0.0),)[:top]))
            continue
        other = "yes" if token == "no" else "no"
        chosen = p if token == "no" else 1 - p
        pair = sorted(((token, math.log(chosen)), (other, math.log(1 - chosen))),
                      key=lambda alt: -alt[1])  # fmt: skip
        out.append(TokenLogprob(token, math.log(chosen), tuple(pair[:top])))
    return tuple(out)


def tokens_within(tokens: Sequence[TokenLogprob], text: str) -> tuple[TokenLogprob, ...]:
    """The leading tokens that spell a prefix of `text` (an answer cut at the token limit
    keeps the tokens it still holds)."""
    out, at = [], 0
    for t in tokens:
        if text[at : at + len(t.token)] != t.token:
            break
        out.append(t)
        at += len(t.token)
    return tuple(out)


def wire_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A choice's `logprobs` object as the chat-completions API returns it."""

    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**item(t.token, t.logprob), "top_logprobs": [item(a, lp) for a, lp in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }
