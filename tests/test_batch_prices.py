"""Batch prices: half the list price in the table, the meter and `lvlmva estimate`; a price
file's `batch_share`."""

from __future__ import annotations

import json

import pytest

from lvlmva.cli import main
from lvlmva.engine.cost import CostMeter, PriceTable
from lvlmva.engine.types import Usage
from lvlmva.errors import ConfigError


async def test_batch_lines_cost_half_in_the_table_and_the_meter():
    table = PriceTable()
    usage = Usage(1_000_000, 100_000)
    assert table.cost("gpt-4o", usage) == pytest.approx(2.5 + 1.0)
    assert table.cost("gpt-4o", usage, batch=True) == pytest.approx((2.5 + 1.0) / 2)
    meter = CostMeter(table, budget_usd=10.0)
    assert meter.add("gpt-4o", usage, batch=True) == pytest.approx(1.75)
    held = await meter.reserve_call("gpt-4o", 1_000_000, share=table.share(batch=True))
    assert held.usd == pytest.approx(5.0)  # worst case: output price, half
    assert table.with_overrides({}).batch_share == 0.5


def test_a_price_file_sets_the_batch_share(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"batch_share": 1.0, "models": {"m": {"input": 1, "output": 2}}}))
    table = PriceTable.from_file(path)
    assert table.cost("m", Usage(1_000_000, 0), batch=True) == pytest.approx(1.0)
    path.write_text(json.dumps({"batch_share": 2, "models": {"m": {"input": 1, "output": 2}}}))
    with pytest.raises(ConfigError, match="batch_share"):
        PriceTable.from_file(path)


def test_estimate_shows_the_synchronous_and_the_batch_cost(capsys):
    args = ["estimate", "--jobs", "100", "--critic-model", "gpt-4o", "--judge-model", "gpt-4o-mini"]
    assert main([*args, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["batch_usd"] == pytest.approx(found["usd"] / 2) and found["usd"] > 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"${found['usd']:.4f} at list prices, ${found['batch_usd']:.4f} through the Batch" in out
