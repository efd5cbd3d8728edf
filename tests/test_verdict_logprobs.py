"""Verdict confidence from token log-probabilities: read from OpenAI-shaped tokens (a verdict
answer's, and the Critic's verdict lines, preferred), asked for only where the model gives
them, served by the strict stand-in in the API's own shape (the official SDK parses it),
cached with the answer, and weighting the neighbour consensus."""

from __future__ import annotations

import json
import math

import pytest
from endpoint_support import decoy_jobs, run_all, serve_endpoint
from standin_support import serve, user

from lvlmva.cache import VerdictCache
from lvlmva.engine.confidence import no_probabilities, preferred, stated_no_probabilities
from lvlmva.engine.keys import ProviderIdentity, request_key
from lvlmva.engine.providers.wire import build_chat_kwargs
from lvlmva.engine.types import ChatRequest, JobResult, JobStatus, Message, TokenLogprob
from lvlmva.engine.validation import verdict_schema
from lvlmva.errors import ConfigError
from lvlmva.pipeline.votes import VoteCollector
from lvlmva.simulation import DictOracle, SimulatedLVLM
from lvlmva.simulation.answerers import SimulatedAnswerer
from lvlmva.vision.render import PALETTE

TEXT = '{"output":[{"color":"red","verdict":"no"},{"color":"blue","verdict":"yes"}]}'


def _tokens(*pieces) -> tuple[TokenLogprob, ...]:
    """Tokens spelling TEXT: plain strings are certain, (token, [(alt, p), ...]) graded."""
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(TokenLogprob(piece, 0.0, ((piece, 0.0),)))
        else:
            token, alternatives = piece
            top = tuple((alt, math.log(p)) for alt, p in alternatives)
            out.append(TokenLogprob(token, dict(top)[token], top))
    assert "".join(t.token for t in out) == TEXT
    return tuple(out)


def test_p_no_is_read_at_each_verdict_token_whatever_the_token_boundaries():
    verdicts = {"red": False, "blue": True}
    # OpenAI-like: the value alone, with a prefix alternative ("n") and one of neither word
    tokens = _tokens(
        '{"output":[{"color":"red","verdict":"', ("no", [("no", 0.6), ("yes", 0.25), ("n", 0.1),
                                                      ("maybe", 0.05)]),
        '"},{"color":"blue","verdict":"', ("yes", [("yes", 0.9), ("no", 0.1)]), '"}]}',
    )  # fmt: skip
    p = no_probabilities(TEXT, tokens, verdicts)
    assert p["red"] == pytest.approx(0.7 / 0.95) and p["blue"] == pytest.approx(0.1)
    # the value inside a token that also holds the quote before it
    tokens = _tokens(
        '{"output":[{"color":"red","verdict":', ('"no', [('"no', 0.8), ('"yes', 0.2)]),
        '"},{"color":"blue","verdict":"yes"}]}',
    )  # fmt: skip
    p = no_probabilities(TEXT, tokens, verdicts)
    assert p == {"red": pytest.approx(0.8), "blue": 0.0}  # blue: certain, its stated verdict


def test_no_probabilities_never_guess_from_tokens_that_do_not_spell_the_answer():
    verdicts = {"red": False, "blue": True}
    assert no_probabilities(TEXT, None, verdicts) is None
    other = TEXT.replace("red", "rot")  # tokens of another text
    assert no_probabilities(TEXT, (TokenLogprob(other, 0.0, ((other, 0.0),)),), verdicts) is None
    short = (TokenLogprob(TEXT[:20], 0.0),)  # ends before any verdict
    assert no_probabilities(TEXT, short, verdicts) is None


def _request(model: str, top: int | None) -> ChatRequest:
    return ChatRequest(model, (Message.text("user", "hi"),), top_logprobs=top)


def test_logprobs_are_sent_when_asked_and_keyed_only_then():
    body = build_chat_kwargs(_request("gpt-4o", 5), structured_output=True)
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert "logprobs" not in build_chat_kwargs(_request("gpt-4o", None), structured_output=True)
    identity = ProviderIdentity("https://api.openai.com/v1")
    keys = {request_key("judge", identity, _request("gpt-4o", top), "t") for top in (None, 0, 5)}
    assert len(keys) == 3


def test_reasoning_models_are_never_asked_for_logprobs():
    from lvlmva.engine.config import EngineConfig
    from lvlmva.engine.requests import critic_request, judge_request
    from lvlmva.engine.types import CritiqueJob
    from lvlmva.prompts import load_prompt_set

    prompts = load_prompt_set("decoy-digits")
    job = CritiqueJob("j", (), ("red", "blue"), load_spec_variables())
    for model, expected in (("gpt-4o", 5), ("gpt-4.1-mini", 5), ("gpt-5-mini", None),
                            ("o4-mini", None)):  # fmt: skip
        sampling = EngineConfig(critic_model=model, prompts=prompts, verdict_logprobs=5).sampling
        request = judge_request(prompts, job, "x", model=model, sampling=sampling, structured=True)
        assert request.top_logprobs == expected, model
        assert critic_request(prompts, job, model=model, sampling=sampling).top_logprobs == expected
    with pytest.raises(ConfigError, match="verdict_logprobs"):
        EngineConfig(critic_model="gpt-4o", prompts=prompts, verdict_logprobs=21)


def load_spec_variables() -> dict[str, str]:
    from lvlmva.prompts import load_spec

    spec = load_spec("decoy-digits")
    return spec.variables(spec.class_names[0])


async def test_the_stand_in_serves_logprobs_in_the_api_shape_the_sdk_parses():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)
    fmt = {"type": "json_schema",
           "json_schema": {"name": "v", "schema": verdict_schema(["red", "blue"]), "strict": True}}
    async with serve(SimulatedAnswerer(sim)) as s:
        reply = await s.client.chat.completions.create(
            model="gpt-4o", messages=user("Verdict for red: yes\nVerdict for blue: no"),
            logprobs=True, top_logprobs=2, response_format=fmt,
        )  # fmt: skip
        choice = reply.choices[0]
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == choice.message.content
        assert all(len(t.top_logprobs) <= 2 and t.bytes == list(t.token.encode()) for t in tokens)
        plain = await s.client.chat.completions.create(
            model="gpt-4o", messages=user("Verdict for red: yes"), response_format=fmt
        )
        assert plain.choices[0].logprobs is None
        with pytest.raises(Exception) as info:  # the API's rule for reasoning models
            await s.client.chat.completions.create(
                model="gpt-5-mini", messages=user("x"), logprobs=True
            )
        assert getattr(info.value, "code", None) == "unsupported_parameter"


async def test_fused_verdicts_carry_the_simulations_calibrated_p_no_and_survive_the_cache(
    tmp_path,
):
    jobs, oracle = decoy_jobs(8)
    async with serve_endpoint(oracle, verdict_accuracy=0.87) as endpoint:
        engine = endpoint.engine(
            VerdictCache(tmp_path), critic_model="gpt-4o", fused=True, verdict_logprobs=5
        )
        first = {r.job_id: r for r in await run_all(engine, jobs)}
        again = endpoint.engine(
            VerdictCache(tmp_path), critic_model="gpt-4o", fused=True, verdict_logprobs=5
        )
        second = {r.job_id: r for r in await run_all(again, jobs)}
        calls = len(endpoint.ledger.calls)
    assert calls == len(jobs)  # the rerun came from the cache, logprobs included
    for job_id, result in first.items():
        assert result.ok and result.no_probability == second[job_id].no_probability
        for color, relevant in result.verdicts.items():
            # independent errors at 0.87: every verdict is reported at confidence 0.87
            expected = 0.13 if relevant else 0.87
            assert result.no_probability[color] == pytest.approx(expected, abs=1e-6)


async def test_two_step_runs_take_the_critics_doubt_and_a_judge_alone_is_sure():
    jobs, oracle = decoy_jobs(4)
    async with serve_endpoint(oracle, verdict_accuracy=0.87) as endpoint:
        chat = endpoint.engine(critic_model="gpt-4o", judge_model="gpt-4o-mini", verdict_logprobs=5)
        graded = await run_all(chat, jobs)
        judge_only = endpoint.engine(critic_model="gpt-5-mini", judge_model="gpt-4o-mini",
                                     verdict_logprobs=5)  # fmt: skip
        sure = await run_all(judge_only, jobs)
        none = await run_all(endpoint.engine(verdict_logprobs=5), jobs)  # gpt-5 family
    for result in graded:  # read at the Critic's verdict lines: independent errors, 0.87
        assert result.no_probability == {
            c: pytest.approx(0.13 if r else 0.87, abs=1e-6) for c, r in result.verdicts.items()
        }
    for result in sure:  # the Judge transcribes a flat critique
        assert result.no_probability == {c: 0.0 if r else 1.0 for c, r in result.verdicts.items()}
    assert all(r.ok and r.no_probability is None for r in none)


def test_the_critics_verdict_lines_are_read_and_preferred_where_they_agree():
    critique = "Red: on the square.\n**Verdict for Red:** no\n\nBlue: digit.\nVerdict for blue: yes"
    pieces, at = [], 0
    for word in ("no", "yes"):  # tokens: the text around each value certain, the value graded
        i = critique.index(word, critique.index("Verdict", at))
        pieces += [TokenLogprob(critique[at:i], 0.0)]
        top = ((word, math.log(0.7)), ("yes" if word == "no" else "no", math.log(0.3)))
        pieces += [TokenLogprob(word, math.log(0.7), top)]
        at = i + len(word)
    if at < len(critique):
        pieces.append(TokenLogprob(critique[at:], 0.0))
    stated = stated_no_probabilities(critique, pieces, ("red", "blue", "green"))
    assert stated == {"red": (True, pytest.approx(0.7)), "blue": (False, pytest.approx(0.3))}
    judged = {"red": 1.0, "blue": 0.0, "green": 0.0}
    assert preferred({"red": False, "blue": True, "green": True}, judged, stated) == {
        "red": pytest.approx(0.7), "blue": pytest.approx(0.3), "green": 0.0
    }
    # the Judge read blue as "no": the Critic's P for blue does not fit that verdict
    assert preferred({"red": False, "blue": False}, None, stated) == {
        "red": pytest.approx(0.7), "blue": 1.0
    }
    assert preferred({"red": False}, None, {}) is None


def _result(job_id: str, verdicts: dict, p_no: dict | None) -> JobResult:
    return JobResult(job_id, JobStatus.OK, verdicts=verdicts, no_probability=p_no)


def test_votes_average_p_no_and_keep_the_stated_majority():
    collector = VoteCollector(2)
    assert collector.add(_result("s#0", {"red": False}, {"red": 0.55})) is None
    voted = collector.add(_result("s#1", {"red": True}, None))  # no tokens: its 0 / 1
    assert voted.graded and voted.no_share == {"red": pytest.approx(0.275)}
    assert voted.result.verdicts == {"red": True}  # a tie keeps the cluster
    single = VoteCollector(1).add(_result("t", {"red": False, "blue": True}, None))
    assert not single.graded and single.no_share == {"red": 1.0, "blue": 0.0}
    sure = VoteCollector(1).add(_result("u", {"red": False}, {"red": 1.0}))
    assert not sure.graded  # a sure answer's tokens change nothing


def test_the_cache_entry_round_trips_logprobs_and_rejects_a_damaged_one():
    from lvlmva.engine.answers import answer_entry, answer_from_entry
    from lvlmva.engine.types import ChatResponse, Usage

    tokens = (TokenLogprob("no", math.log(0.7), (("no", math.log(0.7)), ("yes", math.log(0.3)))),)
    answer = ChatResponse('{"a": 1}', Usage(1, 2), "gpt-4o", logprobs=tokens)
    entry = json.loads(json.dumps(answer_entry(answer)))
    assert answer_from_entry(entry).logprobs == tokens
    assert "logprobs" not in answer_entry(ChatResponse("x", Usage(), "m"))
    with pytest.raises(ValueError, match="logprobs"):
        answer_from_entry({**entry, "logprobs": [["no"]]})


async def test_batch_answers_keep_their_logprobs_through_ingest_and_the_cache(tmp_path):
    from batch_support import COLORS, answer, batch_engine, job, run_jobs, ticking, verdicts_of

    from lvlmva.simulation.answerers import Answer, FixedAnswerer
    from lvlmva.simulation.batch_api import BatchTiming
    from lvlmva.simulation.logprobs import answer_logprobs
    from lvlmva.simulation.openai_standin import StandInConfig

    def graded(request):  # the Judge's verdicts each at P(its word) = 0.8
        text = answer(request)
        if not text.startswith("{"):
            return text
        said = json.loads(text)["output"]
        p_no = {e["color"]: 0.8 if e["verdict"] == "no" else 0.2 for e in said}
        return Answer(text, answer_logprobs(text, p_no, 5))

    config = StandInConfig(batch=BatchTiming(validation_s=1, lines_per_s=50, finalizing_s=1))
    async with serve(FixedAnswerer(graded), config) as s, ticking(s, 5):
        results = await run_jobs(batch_engine(s, tmp_path, verdict_logprobs=5), [job(0), job(1)])
    for i in (0, 1):
        result = results[f"job{i}"]
        assert result.ok and result.verdicts == verdicts_of(i)
        assert result.no_probability == {
            c: pytest.approx(0.2 if verdicts_of(i)[c] else 0.8) for c in COLORS
        }


def test_a_character_split_over_tokens_keeps_the_verdicts_after_it_readable():
    """Servers write the pieces of a split character as escapes (or U+FFFD, or ""): the tokens'
    bytes put the character on the token that completes it, so offsets hold after it."""
    from lvlmva.engine.providers.wire import parse_logprobs

    critique = "Red \u2014 on the square.\nVerdict for red: no"
    dash = "\u2014".encode()

    def item(token, data, logprob=0.0, top=()):
        return {"token": token, "logprob": logprob, "bytes": None if data is None else list(data),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                 for t, lp in top]}  # fmt: skip

    tail_text = critique.split("\u2014")[1][: -len("no")]
    wire = {"content": [
        item("Red ", b"Red "), item("\\xe2\\x80", dash[:2]), item("\\x94", dash[2:]),
        item(tail_text, tail_text.encode()),
        item("no", b"no", math.log(0.9), [("no", math.log(0.9)), ("yes", math.log(0.1))]),
    ]}  # fmt: skip
    tokens = parse_logprobs(wire)
    assert "".join(t.token for t in tokens) == critique
    read = stated_no_probabilities(critique, tokens, ("red",))
    assert read == {"red": (True, pytest.approx(0.9))}
    # without bytes the escaped pieces do not spell the text: nothing is guessed
    blind = [{**i, "bytes": None} for i in wire["content"]]
    assert stated_no_probabilities(critique, parse_logprobs({"content": blind}), ("red",)) == {}
