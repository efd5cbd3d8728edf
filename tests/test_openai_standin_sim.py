"""The simulated LVLM behind the strict OpenAI stand-in: answers through the official SDK, and
`lvlmva serve-sim` serving it (strict by default) on a fake clock."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest
from standin_support import serve, user

from lvlmva.engine.validation import verdict_schema
from lvlmva.errors import ConfigError
from lvlmva.simulation import DictOracle, SimulatedLVLM
from lvlmva.simulation.answerers import SimulatedAnswerer
from lvlmva.vision.render import PALETTE


def _schema_body(schema, name="verdicts"):
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    return {"response_format": fmt}


async def test_the_simulated_lvlm_answers_through_the_stand_in():
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)
    async with serve(SimulatedAnswerer(sim)) as s:
        reply = await s.client.chat.completions.create(
            model="simulated-judge",
            messages=user("Verdict for red: yes\nVerdict for blue: no"),
            max_tokens=200,
            temperature=0,
            extra_body=_schema_body(verdict_schema(["red", "blue"])),
        )
        assert json.loads(reply.choices[0].message.content) == {
            "output": [{"color": "red", "verdict": "yes"}, {"color": "blue", "verdict": "no"}]
        }
        with pytest.raises(openai.BadRequestError) as info:  # prose without verdict lines
            await s.client.chat.completions.create(
                model="simulated-judge",
                messages=user("no verdicts here"),
                extra_body=_schema_body(verdict_schema(["red"])),
            )
        assert info.value.code == "simulation_cannot_answer"
    with pytest.raises(ConfigError, match="owns transport faults"):
        SimulatedAnswerer(SimulatedLVLM(oracle=DictOracle(), palette=PALETTE, rate_429=0.1))


def test_serve_sim_is_strict_by_default_and_drives_a_fake_clock():
    proc = subprocess.Popen(
        [sys.executable, "-m", "lvlmva.cli", "serve-sim", "--port", "0", "--fake-clock"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "SIMULATED LVLM" in line and "strict OpenAI stand-in" in line, line
        base = line.rsplit(" ", 1)[-1].strip()
        root = base.removesuffix("/v1")

        def post(url, body):
            request = urllib.request.Request(
                url, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as err:
                return err.code, json.load(err)

        status, body = post(f"{base}/chat/completions",
                            {"model": "gpt-5", "messages": user(), "max_tokens": 5})  # fmt: skip
        assert status == 400 and body["error"]["code"] == "unsupported_parameter"
        before = post(f"{root}/stand-in/advance", {"seconds": 0})[1]["now"]
        assert post(f"{root}/stand-in/advance", {"seconds": 3600})[1]["now"] == before + 3600
    finally:
        proc.terminate()
        proc.wait(timeout=10)
