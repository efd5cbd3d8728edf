"""Price table, token estimates and the cost meter's budget."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import zlib

import pytest

from lvlmva.engine.cost import (
    CostMeter,
    ModelPrice,
    PriceTable,
    estimate_image_tokens,
    estimate_prompt_tokens,
    estimate_request_tokens,
)
from lvlmva.engine.errors import BudgetReached
from lvlmva.engine.types import ChatRequest, ImagePart, Message, TextPart, Usage
from lvlmva.errors import ConfigError


def png_bytes(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of the given size (only its header matters here)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * ((width + 7) // 8) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((336, 336), 255),  # one tile
        ((512, 512), 255),
        ((513, 512), 425),  # two tiles
        ((1024, 1024), 765),  # scaled to 768 x 768: four tiles (OpenAI's worked example)
        ((2048, 4096), 1105),  # 1024 x 2048 -> 768 x 1536: 2 x 3 tiles
        ((28, 28), 255),  # never scaled up
    ],
)
def test_image_tile_rule(size, tokens):
    assert estimate_image_tokens(*size) == tokens


def test_request_estimate_counts_text_images_and_max_tokens():
    text = "x" * 400
    image = ImagePart("clusters", png_bytes(1024, 1024))  # size read from the PNG header
    sized = ImagePart("original", b"not decoded", width=336, height=336)
    request = ChatRequest(
        model="gpt-4o",
        messages=(Message.text("system", text), Message("user", (TextPart(text), image, sized))),
        max_tokens=500,
    )
    prompt = estimate_prompt_tokens(request)
    assert prompt == 3 + 2 * 4 + 100 + 100 + 765 + 255
    assert estimate_request_tokens(request) == prompt + 500


def test_price_lookup_and_cost():
    table = PriceTable()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=100_000)
    assert table.cost("gpt-4o-mini", usage) == pytest.approx(0.15 + 0.06)
    assert table.lookup("openai/gpt-4o-2024-08-06") == table.lookup("gpt-4o")
    assert table.lookup("gpt-4o-mini-2024-07-18") == ModelPrice(0.15, 0.60, 0.075)


def test_exact_names_before_snapshots_and_no_loose_prefixes():
    table = PriceTable()
    assert table.lookup("gpt-5-pro") == ModelPrice(15.00, 120.00)  # not gpt-5's 1.25 / 10
    assert table.lookup("gpt-5-pro-2025-10-06") == table.lookup("gpt-5-pro")
    assert table.lookup("gpt-4o-2024-05-13") == ModelPrice(5.00, 15.00)  # its own price
    assert table.lookup("gpt-4o-2024-11-20") == table.lookup("gpt-4o")
    assert table.lookup("gpt-5-codex-mystery") is None  # a variant is never priced as gpt-5
    assert table.lookup("gpt-4o-mini-tts") is None


def test_cached_input_tokens_are_billed_at_the_cached_rate():
    price = PriceTable().require("gpt-4o")
    usage = Usage(prompt_tokens=10_000, completion_tokens=1_000, cached_tokens=4_000)
    assert price.cost(usage) == pytest.approx((6_000 * 2.50 + 4_000 * 1.25 + 1_000 * 10.0) / 1e6)
    no_cached_rate = ModelPrice(1.0, 2.0)
    assert no_cached_rate.cost(usage) == pytest.approx((10_000 * 1.0 + 1_000 * 2.0) / 1e6)
    reasoning = Usage(1_000, 3_000, reasoning_tokens=2_500)  # reasoning is inside completion
    assert PriceTable().cost("gpt-5-mini", reasoning) == pytest.approx(
        (1_000 * 0.25 + 3_000 * 2.0) / 1e6
    )


def test_a_price_file_takes_a_cached_input_price(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"llava": {"input": 1, "cached_input": 0.1, "output": 2}}))
    assert PriceTable.from_file(path).lookup("llava") == ModelPrice(1.0, 2.0, 0.1)
    path.write_text(json.dumps({"llava": {"input": 1, "cached": 0.1}}))
    with pytest.raises(ConfigError, match="cached_input"):
        PriceTable.from_file(path)


def test_unknown_model_costs_zero_and_warns_once(caplog):
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="lvlmva.engine.cost"):
        assert table.cost("my-local-llava", Usage(10, 10)) == 0.0
        assert table.cost("my-local-llava", Usage(10, 10)) == 0.0
    assert sum("my-local-llava" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_price_file_formats(tmp_path, suffix):
    path = tmp_path / f"prices{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"models": {"llava": {"input": 1, "output": 2}}}))
    elif suffix == ".yaml":
        path.write_text("llava:\n  input: 1\n  output: 2\n")
    else:
        path.write_text("[models.llava]\ninput = 1\noutput = 2\n")
    table = PriceTable.from_file(path)
    assert table.lookup("llava") == ModelPrice(1.0, 2.0)
    assert table.lookup("gpt-4o") is not None  # defaults kept
    assert PriceTable.from_file(path, include_defaults=False).lookup("gpt-4o") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"llava": {"input": -1, "output": 2}}', "llava.input must be a non-negative number"),
        ('{"llava": {"inptu": 1}}', "model 'llava' needs"),
        ('{"llava": 3}', "model 'llava' needs"),
        ("[1, 2]", "expected a mapping"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_price_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        PriceTable.from_file(path)


def test_missing_or_unsupported_price_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        PriceTable.from_file(tmp_path / "nope.json")
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"\.json"):
        PriceTable.from_file(tmp_path / "p.csv")


def test_meter_adds_usage_and_cost():
    meter = CostMeter(PriceTable({"m": ModelPrice(1.0, 4.0)}))
    assert meter.add("m", Usage(1_000_000, 0)) == pytest.approx(1.0)
    assert meter.add("m", Usage(0, 500_000)) == pytest.approx(2.0)
    assert meter.spent_usd == pytest.approx(3.0)
    assert not meter.budget_reached  # no budget


async def test_budget_stops_new_requests_and_is_never_exceeded():
    meter = CostMeter(PriceTable({"m": ModelPrice(1.0, 2.0)}), budget_usd=0.01)
    sent = 0
    with pytest.raises(BudgetReached):
        while True:
            reservation = await meter.reserve_call("m", 1_000)  # worst case 0.002 USD each
            sent += 1
            meter.add("m", Usage(800, 100))  # really 0.001 USD
            meter.release(reservation)
    assert meter.budget_reached
    assert meter.spent_usd <= 0.01
    assert sent == 9  # 9 x 0.001 spent; the 10th could cost up to 0.002 more


async def test_in_flight_reservations_count_against_the_budget():
    meter = CostMeter(PriceTable({"m": ModelPrice(1.0, 1.0)}), budget_usd=0.005)
    held = [await meter.reserve_call("m", 1_000) for _ in range(5)]
    assert meter.remaining_usd == pytest.approx(0.0)
    sixth = asyncio.ensure_future(meter.reserve_call("m", 1_000))
    await asyncio.sleep(0)
    assert not sixth.done()  # it waits while the five may give budget back
    meter.add("m", Usage(5_000, 0))  # they cost their worst case: nothing comes back
    for reservation in held:
        meter.release(reservation)
    with pytest.raises(BudgetReached):
        await asyncio.wait_for(sixth, 1)
    assert meter.budget_reached


async def test_budget_with_unknown_model_is_a_config_error():
    meter = CostMeter(PriceTable({}), budget_usd=1.0)
    with pytest.raises(ConfigError, match="no price for model 'mystery'"):
        await meter.reserve_call("mystery", 100)
    with pytest.raises(ConfigError):
        CostMeter(budget_usd=0)
