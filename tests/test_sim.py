"""The simulated LVLM: oracles, cluster-map decoding, verdict accuracy, determinism, fault
injection, and the OpenAI-compatible HTTP server driven by the real openai client."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import aiohttp
import numpy as np
import openai
import pytest

from lvlmva.engine.errors import BadRequest, ProviderTimeout, RateLimited, ServerError
from lvlmva.engine.types import ChatRequest, ImagePart, Message, TextPart
from lvlmva.engine.validation import VerdictValidationError, parse_verdicts, verdict_schema
from lvlmva.errors import ConfigError, DataError
from lvlmva.simulation import (
    DictOracle,
    DirectoryOracle,
    SimulatedLVLM,
    image_key,
    start_sim_server,
    write_oracle,
)
from lvlmva.simulation.clustermap import find_spurious
from lvlmva.simulation.critique import read_verdicts
from lvlmva.simulation.simulator import SimStats
from lvlmva.vision.render import PALETTE, decode_cluster_map, render_critic_images

SIZE = 28


def make_sample(seed: int, *, decoy: bool = True):
    """A synthetic sample: Voronoi clusters with background speckle, a 4x4 corner decoy."""
    rng = np.random.default_rng(seed)
    image = rng.random((1, SIZE, SIZE)).astype(np.float32)
    centres = rng.uniform(0, SIZE, size=(7, 2))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    distance = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    labels = distance.argmin(axis=-1)
    labels[rng.random((SIZE, SIZE)) < 0.3] = -1
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    if decoy:
        r, c = rng.integers(0, 2, size=2) * (SIZE - 4)
        mask[r : r + 4, c : c + 4] = True
    rendered = render_critic_images(image, labels)
    truth = {
        colour: bool(np.any(labels[mask] == cid))
        for colour, cid in zip(rendered.colors, rendered.cluster_ids, strict=True)
    }
    return rendered, labels, mask, truth


def critic_request(rendered, *, schema: bool = False, model: str = "sim-critic") -> ChatRequest:
    colours = ", ".join(rendered.colors)
    user = Message(
        "user",
        (
            TextPart(f"Class 3. Colours: {colours}."),
            ImagePart("original", rendered.original),
            ImagePart("clusters", rendered.clusters),
            ImagePart("overlay", rendered.overlay),
        ),
    )
    return ChatRequest(
        model=model,
        messages=(Message.text("system", "You are the Critic."), user),
        seed=0,
        response_schema=verdict_schema(rendered.colors) if schema else None,
    )


def judge_request(critique: str, colors, *, max_tokens: int = 1024) -> ChatRequest:
    return ChatRequest(
        model="sim-judge",
        messages=(
            Message.text("system", "Turn the critique into JSON."),
            Message("user", (TextPart(f"Colours: {', '.join(colors)}"), TextPart(critique))),
        ),
        max_tokens=max_tokens,
        seed=0,
        response_schema=verdict_schema(colors),
    )


@pytest.fixture(scope="module")
def samples():
    return [make_sample(i) for i in range(40)]


def oracle_for(samples) -> DictOracle:
    oracle = DictOracle()
    for rendered, _, mask, _ in samples:
        oracle.add(rendered.original, mask)
    return oracle


# -- oracles ---------------------------------------------------------------------------------


def test_dict_and_directory_oracles(tmp_path, samples):
    rendered, _, mask, _ = samples[0]
    key = image_key(rendered.original)
    oracle = DictOracle({rendered.original: mask})
    assert np.array_equal(oracle.lookup(key), mask)
    assert np.array_equal(oracle.lookup(key.upper()), mask)
    assert oracle.lookup("0" * 64) is None and len(oracle) == 1 and key in oracle

    written = write_oracle(tmp_path / "o", [(rendered.original, mask), (image_key(b"x"), ~mask)])
    assert written == 2
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        [f"{key}.npy", f"{image_key(b'x')}.npy"]
    )
    folder = DirectoryOracle(tmp_path / "o")
    assert np.array_equal(folder.lookup(key), mask) and folder.lookup(key).dtype == bool
    assert np.array_equal(folder.lookup(image_key(b"x")), ~mask)
    assert folder.lookup("f" * 64) is None and folder.lookup("../etc") is None
    assert len(folder) == 2

    with pytest.raises(ConfigError, match="does not exist"):
        DirectoryOracle(tmp_path / "missing")
    with pytest.raises(DataError, match="2-D"):
        oracle.add(key, np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="SHA-256"):
        oracle.add("not-a-hash", mask)


# -- decoding --------------------------------------------------------------------------------


def test_decoding_a_rendered_map_recovers_every_cluster(samples):
    for rendered, labels, mask, truth in samples[:10]:
        decoded = decode_cluster_map(rendered.clusters, PALETTE)
        assert decoded.present == rendered.colors
        scale = decoded.labels.shape[0] // SIZE
        assert scale == 12  # 28 px rendered at 336 px
        names = list(PALETTE)
        assert np.array_equal(decoded.labels[::scale, ::scale], labels)  # id k: palette entry k
        for colour in rendered.colors:
            k = names.index(colour)
            assert decoded.counts[colour] == (labels == k).sum() * scale * scale
        findings = find_spurious(decoded, mask)
        assert {f.color: f.spurious for f in findings} == truth


def test_overlap_rule_and_unknown_images(samples):
    rendered, labels, mask, _ = next(s for s in samples if any(s[3].values()))
    decoded = decode_cluster_map(rendered.clusters, PALETTE)
    names = list(PALETTE)
    strict = {f.color: f for f in find_spurious(decoded, mask, min_overlap=0.5)}
    for colour, finding in strict.items():
        k = names.index(colour)
        share = np.logical_and(labels == k, mask).sum() / (labels == k).sum()
        assert finding.spurious == (share >= 0.5)
    assert not any(f.spurious for f in find_spurious(decoded, None))


def test_decoding_rejects_images_that_are_not_cluster_maps(samples):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    png = render_critic_images(noise.transpose(2, 0, 1) / 255.0, np.full((64, 64), -1)).original
    with pytest.raises(ValueError, match="cluster map"):
        decode_cluster_map(png, PALETTE)
    with pytest.raises(ValueError, match="not a readable image"):
        decode_cluster_map(b"not a png", PALETTE)


# -- verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize("accuracy", [0.87, 0.6])
def test_verdict_accuracy_matches_the_configured_value(samples, accuracy):
    sim = SimulatedLVLM(oracle=oracle_for(samples), palette=PALETTE, verdict_accuracy=accuracy)
    right = total = mixed_images = 0
    for rendered, _, _, truth in samples:
        verdicts = sim.critic_verdicts(rendered.original, rendered.clusters)
        assert [v.color for v in verdicts] == list(rendered.colors)
        correct = [v.relevant == (not truth[v.color]) for v in verdicts]
        assert [v.truly_spurious for v in verdicts] == [truth[v.color] for v in verdicts]
        right += sum(correct)
        total += len(correct)
        mixed_images += 0 < sum(correct) < len(correct)
    assert total >= 250
    assert abs(right / total - accuracy) < 3 * math.sqrt(accuracy * (1 - accuracy) / total)
    # errors are per cluster, not per image: about 60% of the images mix right and wrong at 0.87
    assert mixed_images >= len(samples) // 3


def test_perfect_and_inverted_critics_and_oracle_misses(samples):
    oracle = oracle_for(samples)
    for accuracy, flip in ((1.0, False), (0.0, True)):
        sim = SimulatedLVLM(oracle=oracle, palette=PALETTE, verdict_accuracy=accuracy)
        for rendered, _, _, truth in samples[:8]:
            got = {
                v.color: v.relevant
                for v in sim.critic_verdicts(rendered.original, rendered.clusters)
            }
            assert got == {c: (not s) != flip for c, s in truth.items()}
    blind = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, verdict_accuracy=1.0)
    rendered = samples[0][0]
    assert all(v.relevant for v in blind.critic_verdicts(rendered.original, rendered.clusters))


async def test_same_request_same_answer_and_seed_matters(samples):
    oracle = oracle_for(samples)
    a = SimulatedLVLM(oracle=oracle, palette=PALETTE, seed=1)
    b = SimulatedLVLM(oracle=oracle, palette=PALETTE, seed=1)
    c = SimulatedLVLM(oracle=oracle, palette=PALETTE, seed=2)
    differs = 0
    for rendered, *_ in samples[:12]:
        request = critic_request(rendered)
        first = await a.complete(request, timeout=5)
        assert (await a.complete(request, timeout=5)) == first
        assert (await b.complete(request, timeout=5)) == first
        differs += (await c.complete(request, timeout=5)).text != first.text
    assert differs > 0
    assert a.stats.duplicate_answers == 12 and a.stats.requests == 24


async def test_critic_judge_and_fused_answers_agree(samples):
    # systematic=1: every sample of a question (here: two wordings) gets the same verdicts
    sim = SimulatedLVLM(
        oracle=oracle_for(samples), palette=PALETTE, verdict_accuracy=0.7, systematic=1.0
    )
    for rendered, *_ in samples[:6]:
        expected = {
            v.color: v.relevant for v in sim.critic_verdicts(rendered.original, rendered.clusters)
        }
        critique = await sim.complete(critic_request(rendered), timeout=5)
        assert "simulated" in critique.text
        assert critique.text.count("\n\n") == len(rendered.colors)  # note + one per colour
        assert critique.usage.prompt_tokens > 3 * 85 and critique.usage.completion_tokens > 50
        judged = await sim.complete(judge_request(critique.text, rendered.colors), timeout=5)
        assert parse_verdicts(judged.text, rendered.colors) == expected
        fused = await sim.complete(critic_request(rendered, schema=True), timeout=5)
        assert parse_verdicts(fused.text, rendered.colors) == expected


def test_judge_reads_verdict_lines_written_by_people_too():
    text = (
        "Red is on the digit.\n**Verdict for red:** yes\n- verdict for Blue: NO\n"
        "Verdict for red: no"
    )
    assert read_verdicts(text, ["red", "blue", "green"]) == [("red", True), ("blue", False)]


async def test_judge_without_verdict_lines_is_a_bad_request():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)
    with pytest.raises(BadRequest, match="Verdict for"):
        await sim.complete(judge_request("nothing useful here", ["red"]), timeout=5)
    only_one = ChatRequest("m", (Message("user", (ImagePart("original", b"x"),)),))
    with pytest.raises(BadRequest, match="first two images"):
        await sim.complete(only_one, timeout=5)


async def test_long_answers_are_cut_at_max_tokens(samples):
    sim = SimulatedLVLM(oracle=oracle_for(samples), palette=PALETTE)
    critique = "\n".join(f"Verdict for {c}: yes" for c in PALETTE)
    reply = await sim.complete(judge_request(critique, list(PALETTE), max_tokens=5), timeout=5)
    assert reply.usage.completion_tokens == 5 and len(reply.text) == 20
    with pytest.raises(VerdictValidationError):
        parse_verdicts(reply.text, list(PALETTE))


# -- faults and latency ----------------------------------------------------------------------


def classify(text: str, colors) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "malformed"
    entries = data.get("output") if isinstance(data, dict) and set(data) == {"output"} else None
    if not isinstance(entries, list) or any(
        set(e) != {"color", "verdict"} or e["verdict"] not in ("yes", "no") for e in entries
    ):
        return "schema"
    named = [e["color"] for e in entries]
    if len(set(named)) != len(named):
        return "schema"
    return "ok" if sorted(named) == sorted(colors) else "colors"


async def test_each_fault_appears_at_its_rate():
    rates = {"429": 0.08, "500": 0.05, "timeout": 0.04}
    json_rates = {"malformed": 0.1, "schema": 0.07, "colors": 0.05}
    sim = SimulatedLVLM(
        oracle=DictOracle(),
        palette=PALETTE,
        rate_429=rates["429"],
        rate_500=rates["500"],
        rate_timeout=rates["timeout"],
        rate_malformed_json=json_rates["malformed"],
        rate_schema_violation=json_rates["schema"],
        rate_wrong_colors=json_rates["colors"],
        retry_after_s=2.5,
        seed=3,
    )
    colors = ["red", "blue", "green", "yellow"]
    critique = "\n".join(
        f"Verdict for {c}: {'yes' if i % 2 else 'no'}" for i, c in enumerate(colors)
    )
    n = 3000
    counts: Counter[str] = Counter()
    for _ in range(n):
        try:
            reply = await sim.complete(judge_request(critique, colors), timeout=0.0)
        except RateLimited as exc:
            assert exc.retry_after == 2.5 and exc.status == 429
            counts["429"] += 1
        except ServerError as exc:
            assert exc.status == 500
            counts["500"] += 1
        except ProviderTimeout:
            counts["timeout"] += 1
        else:
            kind = classify(reply.text, colors)
            counts[kind] += 1
            if kind == "ok":
                assert parse_verdicts(reply.text, colors) == {
                    c: bool(i % 2) for i, c in enumerate(colors)
                }
            else:
                with pytest.raises(VerdictValidationError):
                    parse_verdicts(reply.text, colors)
    for kind, rate in rates.items():
        assert abs(counts[kind] / n - rate) < 0.02, (kind, counts)
    through = n - sum(counts[k] for k in rates)
    for kind, rate in json_rates.items():
        assert abs(counts[kind] / through - rate) < 0.025, (kind, counts)
    assert sim.stats.requests == n
    assert sim.stats.by_status["200"] == through
    assert sim.stats.by_status["429"] == counts["429"]


def test_fault_rates_are_validated():
    with pytest.raises(ConfigError, match="rate_500"):
        SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, rate_500=1.5)
    with pytest.raises(ConfigError, match="must not exceed 1"):
        SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, rate_429=0.6, rate_timeout=0.6)
    with pytest.raises(ConfigError, match="verdict_accuracy"):
        SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, verdict_accuracy=1.2)


async def test_latency_is_awaited_concurrently_and_times_out():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, latency_ms=(100.0, 50.0))
    request = judge_request("Verdict for red: yes", ["red"])
    start = time.perf_counter()
    await asyncio.gather(*(sim.complete(request, timeout=5) for _ in range(50)))
    elapsed = time.perf_counter() - start
    assert 0.05 <= elapsed < 1.0  # 50 x ~100 ms would take ~5 s if serialised
    slow = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, latency_ms=300.0)
    start = time.perf_counter()
    with pytest.raises(ProviderTimeout):
        await slow.complete(request, timeout=0.05)
    assert time.perf_counter() - start < 0.25
    assert slow.stats.by_status["timeout"] == 1 and not slow.stats.answers


# -- HTTP ------------------------------------------------------------------------------------


def openai_messages(request: ChatRequest) -> list[dict]:
    out = []
    for m in request.messages:
        if all(isinstance(p, TextPart) for p in m.parts):
            out.append({"role": m.role, "content": "\n\n".join(p.text for p in m.parts)})
            continue
        content = []
        for p in m.parts:
            if isinstance(p, TextPart):
                content.append({"type": "text", "text": p.text})
            else:
                url = f"data:image/png;base64,{base64.b64encode(p.data).decode()}"
                content.append({"type": "image_url", "image_url": {"url": url}})
        out.append({"role": m.role, "content": content})
    return out


async def ask(client: openai.AsyncOpenAI, request: ChatRequest):
    kwargs = {}
    if request.response_schema is not None:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "verdicts", "schema": request.response_schema, "strict": True},
        }
    return await client.chat.completions.create(
        model=request.model,
        messages=openai_messages(request),
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        seed=request.seed,
        **kwargs,
    )


async def test_http_server_answers_the_openai_client_like_in_process(tmp_path, samples):
    write_oracle(tmp_path / "oracle", [(r.original, m) for r, _, m, _ in samples[:6]])
    local = SimulatedLVLM(oracle=DirectoryOracle(tmp_path / "oracle"), palette=PALETTE, seed=4)
    served = SimulatedLVLM(oracle=DirectoryOracle(tmp_path / "oracle"), palette=PALETTE, seed=4)
    server = await start_sim_server(served, port=0)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sim", max_retries=0)
    try:
        for rendered, *_ in samples[:6]:
            critique = await local.complete(critic_request(rendered), timeout=5)
            judge = judge_request(critique.text, rendered.colors)
            for request in (critic_request(rendered), critic_request(rendered, schema=True), judge):
                want = await local.complete(request, timeout=5)
                got = await ask(client, request)
                assert got.choices[0].message.content == want.text
                assert got.usage.prompt_tokens == want.usage.prompt_tokens
                assert got.usage.completion_tokens == want.usage.completion_tokens
                assert got.model == request.model and got.id.startswith("chatcmpl-")
        models = await client.models.list()
        assert "simulated-critic" in [m.id for m in models.data]
        assert set(served.stats.answers) == set(local.stats.answers)  # same request hashes
        with pytest.raises(openai.BadRequestError, match="data: URLs"):
            await client.chat.completions.create(
                model="m",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}
                        ],
                    }
                ],
            )
    finally:
        await client.close()
        await server.close()


async def test_http_stats_count_duplicates_and_reset():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)
    server = await start_sim_server(sim, port=0)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sim", max_retries=0)
    try:
        request = judge_request("Verdict for red: yes\nVerdict for blue: no", ["red", "blue"])
        for _ in range(2):
            await ask(client, request)
        await ask(client, judge_request("Verdict for red: no", ["red"]))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/sim/stats") as response:
                stats = await response.json()
            async with http.get(f"{server.url}/sim/stats?per_hash=0") as response:
                brief = await response.json()
            async with http.post(f"{server.url}/sim/reset") as response:
                assert await response.json() == {"reset": True}
        assert stats["simulation"] is True and stats["requests"] == 3
        assert stats["by_status"] == {"200": 3}
        assert stats["duplicate_answers"] == 1 and stats["distinct_answered"] == 2
        assert sorted(stats["answers_by_hash"].values()) == [1, 2]
        assert "answers_by_hash" not in brief
        assert stats["arrivals_recorded"] == 3 and stats["peak_requests_60s"] == 3
        assert 1 <= stats["peak_requests_1s"] <= 3
        assert sim.stats.requests == 0 and not sim.stats.answers and not sim.stats.arrivals
    finally:
        await client.close()
        await server.close()


def test_peak_in_window_counts_the_busiest_sliding_window():
    stats = SimStats()
    assert stats.peak_in_window(60.0) == 0
    stats.arrivals.extend([0.0, 0.5, 0.9, 1.0, 1.2, 5.0, 59.9, 60.0, 60.1, 61.05])
    assert stats.peak_in_window(1.0) == 4  # 0.5, 0.9, 1.0, 1.2 (a window is half-open)
    assert stats.peak_in_window(60.0) == 8  # 0.5 ... 60.1 (0.0 has left the window at 60.0)
    assert stats.peak_in_window(0.05) == 1


async def test_http_429_carries_retry_after_and_500_504_map_to_errors():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, rate_429=1.0, retry_after_s=1.5)
    server = await start_sim_server(sim, port=0)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sim", max_retries=0)
    request = judge_request("Verdict for red: yes", ["red"])
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await ask(client, request)
        assert info.value.response.headers["retry-after"] == "2"
        assert info.value.response.headers["retry-after-ms"] == "1500"
        sim.faults = type(sim.faults)(rate_500=1.0)
        with pytest.raises(openai.InternalServerError) as info:
            await ask(client, request)
        assert info.value.status_code == 500
        sim.faults = type(sim.faults)(rate_timeout=1.0)
        with pytest.raises((openai.APITimeoutError, openai.InternalServerError)):
            await client.with_options(timeout=0.3).chat.completions.create(
                model="m", messages=openai_messages(request)
            )
    finally:
        await client.close()
        await server.close()
    assert sim.stats.by_status["429"] == 1 and sim.stats.by_status["500"] == 1


async def test_http_sustains_concurrent_load_with_latency():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, latency_ms=200.0)
    server = await start_sim_server(sim, port=0)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sim", max_retries=0)
    request = judge_request("Verdict for red: yes", ["red"])
    try:
        start = time.perf_counter()
        replies = await asyncio.gather(*(ask(client, request) for _ in range(120)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
        await server.close()
    assert all(r.choices[0].message.content for r in replies)
    assert elapsed < 8.0  # ~0.2 s of latency each, awaited concurrently, not one after another
    assert sim.stats.duplicate_answers == 119


async def test_non_loopback_hosts_are_refused():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        with pytest.raises(ConfigError, match="not a loopback address"):
            await start_sim_server(sim, host=host, port=0)


def test_serve_sim_command_prints_what_it_is_and_serves(tmp_path):
    from lvlmva.cli import main

    assert main(["serve-sim", "--host", "10.1.2.3"]) == 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lvlmva.cli",
            "serve-sim",
            "--port",
            "0",
            "--latency-ms",
            "0",
            "--oracle-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "SIMULATED LVLM" in line and "not a model" in line
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        models = json.loads(urllib.request.urlopen(f"{url}/models", timeout=10).read())
        assert models["data"][0]["owned_by"] == "lvlmva-simulation"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_relevant_accuracy_is_separate_from_verdict_accuracy():
    import torch

    from lvlmva.errors import ConfigError
    from lvlmva.simulation import DictOracle, SimulatedLVLM
    from lvlmva.vision.render import PALETTE, render_critic_images

    labels = torch.full((8, 8), -1, dtype=torch.long)
    labels[:2, :2], labels[4:, 4:], labels[4:, :3] = 0, 1, 2  # cluster 0 sits on the decoy
    spurious = np.zeros((8, 8), dtype=bool)
    spurious[:2, :2] = True
    oracle = DictOracle()
    sim = SimulatedLVLM(oracle=oracle, palette=PALETTE, verdict_accuracy=0.0, relevant_accuracy=1.0)
    for k in range(30):
        rendered = render_critic_images(
            torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(k)), labels, size=32
        )
        oracle.add(rendered.original, spurious)
        verdicts = {v.color: v for v in sim.critic_verdicts(rendered.original, rendered.clusters)}
        first, second, third = rendered.colors  # clusters 0, 1, 2
        assert verdicts[first].truly_spurious and verdicts[first].relevant  # always wrong
        assert verdicts[second].relevant and verdicts[third].relevant  # always right
    assert SimulatedLVLM(oracle=oracle, palette=PALETTE).relevant_accuracy == 0.87
    with pytest.raises(ConfigError):
        SimulatedLVLM(oracle=oracle, palette=PALETTE, relevant_accuracy=1.5)
