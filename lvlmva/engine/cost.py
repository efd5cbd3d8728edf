"""Token estimates, a price table and a cost meter with an optional budget.

The default prices are public list prices in USD per 1M tokens as we last saw them; providers
change them, so override them with `PriceTable.from_file` (JSON, YAML or TOML):

    {"gpt-4o": {"input": 2.5, "output": 10.0}, "my-vllm-model": {"input": 0, "output": 0}}

(optionally nested under a top-level "models" key, beside which `"batch_share": 0.5` sets the
share of these prices a Batch API request pays).

Batch prices: OpenAI bills Batch API requests at 50% of the synchronous price, input and
output tokens alike (its pricing page; restated in community.openai.com thread 1357069); the
cost calls take `batch=True` for them (`BATCH_SHARE`, per table `PriceTable.batch_share`).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvlmva.engine.types import ChatRequest, ImagePart, TextPart, Usage
from lvlmva.errors import ConfigError

__all__ = [
    "BATCH_SHARE",
    "DEFAULT_PRICES",
    "CostMeter",
    "ModelPrice",
    "PriceTable",
    "Reservation",
    "estimate_image_tokens",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
]

log = logging.getLogger(__name__)

BATCH_SHARE = 0.5  # the share of the synchronous price a Batch API request pays


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input + usage.completion_tokens * self.output) / 1e6


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "o4-mini": ModelPrice(1.10, 4.40),
}


class PriceTable:
    """Prices per model. Lookup: exact name, then without a "provider/" prefix, then the
    longest known name the model starts with (dated snapshots such as gpt-4o-2024-08-06)."""

    def __init__(
        self, prices: Mapping[str, ModelPrice] | None = None, *, batch_share: float = BATCH_SHARE
    ) -> None:
        self.prices: dict[str, ModelPrice] = dict(DEFAULT_PRICES if prices is None else prices)
        if not 0.0 <= batch_share <= 1.0:
            raise ConfigError(f"batch_share must be in [0, 1], got {batch_share}")
        self.batch_share = batch_share
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"PriceTable({len(self.prices)} models)"

    def with_overrides(self, prices: Mapping[str, ModelPrice]) -> PriceTable:
        return PriceTable({**self.prices, **prices}, batch_share=self.batch_share)

    def share(self, batch: bool) -> float:
        """The share of the list price a request pays: `batch_share` for a batch line."""
        return self.batch_share if batch else 1.0

    @classmethod
    def from_file(cls, path: str | Path, *, include_defaults: bool = True) -> PriceTable:
        """Read a JSON/YAML/TOML price file; its entries override (or replace) the defaults."""
        path = Path(path)
        data = _read_structured(path)
        share = BATCH_SHARE
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            share = _batch_share(path, data.get("batch_share", BATCH_SHARE))
            data = data["models"]
        if not isinstance(data, dict):
            raise ConfigError(
                f"price file {path}: expected a mapping of model -> {{input, output}}"
            )
        prices = {
            str(model): _parse_price(path, str(model), entry) for model, entry in data.items()
        }
        return cls({**DEFAULT_PRICES, **prices} if include_defaults else prices, batch_share=share)

    def lookup(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        bare = model.rsplit("/", 1)[-1]
        if bare in self.prices:
            return self.prices[bare]
        matches = [name for name in self.prices if bare.startswith(name + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def require(self, model: str) -> ModelPrice:
        price = self.lookup(model)
        if price is None:
            raise ConfigError(
                f"no price for model {model!r}, and a budget needs one: add it to a price file "
                '(e.g. {"' + model + '": {"input": 0.15, "output": 0.6}}) and pass --prices'
            )
        return price

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """USD for `usage` (`batch`: at the batch price); an unknown model costs 0 (with one
        warning per model)."""
        price = self.lookup(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for model %r: counting its cost as 0 (see --prices)", model)
            return 0.0
        return price.cost(usage) * self.share(batch)


def _read_structured(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read price file {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
    except Exception as exc:
        raise ConfigError(f"price file {path} is not valid {suffix[1:].upper()}: {exc}") from None
    raise ConfigError(f"price file {path}: use a .json, .yaml/.yml or .toml file")


def _batch_share(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"price file {path}: batch_share must be a number in [0, 1]")
    return float(value)


def _parse_price(path: Path, model: str, entry: Any) -> ModelPrice:
    if not isinstance(entry, dict) or set(entry) - {"input", "output"} or not entry:
        raise ConfigError(
            f'price file {path}: model {model!r} needs {{"input": USD per 1M tokens, '
            f'"output": USD per 1M tokens}}, got {entry!r}'
        )
    values = {}
    for key in ("input", "output"):
        value = entry.get(key, 0.0)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 0
            or not (math.isfinite(value))
        ):
            raise ConfigError(
                f"price file {path}: {model}.{key} must be a non-negative number, got {value!r}"
            )
        values[key] = float(value)
    return ModelPrice(values["input"], values["output"])


# -- token estimates ----------------------------------------------------------------------------

_TOKENS_PER_MESSAGE = 4
_UNKNOWN_IMAGE_TOKENS = 85 + 170 * 4  # a 768 x 768 image, the largest common case


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None


def estimate_image_tokens(width: int, height: int) -> int:
    """OpenAI's high-detail rule: fit in 2048 x 2048, shortest side at most 768, then
    85 + 170 per 512 x 512 tile."""
    if width <= 0 or height <= 0:
        return _UNKNOWN_IMAGE_TOKENS
    w, h = float(width), float(height)
    scale = min(1.0, 2048.0 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768.0 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512.0) * math.ceil(h / 512.0)
    return 85 + 170 * tiles


def _image_tokens(part: ImagePart) -> int:
    width, height = part.width, part.height
    if width <= 0 or height <= 0:
        width, height = _png_size(part.data) or (0, 0)
    return estimate_image_tokens(width, height)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Prompt tokens: text at about 4 characters a token, images by the tile rule."""
    tokens = 3
    for message in request.messages:
        tokens += _TOKENS_PER_MESSAGE
        for part in message.parts:
            if isinstance(part, TextPart):
                tokens += math.ceil(len(part.text) / 4)
            else:
                tokens += _image_tokens(part)
    if request.response_schema is not None:
        tokens += math.ceil(len(json.dumps(request.response_schema)) / 4)
    return tokens


def estimate_request_tokens(request: ChatRequest) -> int:
    """Tokens a request may use: the prompt estimate plus `max_tokens` (what providers count
    against a tokens-per-minute limit)."""
    return estimate_prompt_tokens(request) + request.max_tokens


# -- cost meter ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """Budget held for one request in flight; give it back with `CostMeter.release`."""

    model: str
    tokens: int
    usd: float


@dataclass
class CostMeter:
    """Running cost of the responses seen, with an optional budget.

    `reserve` holds a worst-case amount (estimated tokens at the model's higher per-token price)
    for a request about to be sent and refuses once spent + held + this would pass the budget;
    from the first refusal on `budget_reached` stays True, so no new request is issued while the
    ones in flight finish. Without a budget, unknown models cost 0 (warned once); with one they
    raise `ConfigError`, since their cost could not be bounded."""

    prices: PriceTable = field(default_factory=PriceTable)
    budget_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.budget_usd is not None and not self.budget_usd > 0:
            raise ConfigError(f"budget must be a positive number of USD (got {self.budget_usd})")

    @property
    def budget_reached(self) -> bool:
        if self.budget_usd is None:
            return False
        return self._stopped or self.spent_usd >= self.budget_usd

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(0.0, self.budget_usd - self.spent_usd - self.reserved_usd)

    def _price_of(self, model: str, usage: Usage, batch: bool) -> float:
        if self.budget_usd is not None:
            return self.prices.require(model).cost(usage) * self.prices.share(batch)
        return self.prices.cost(model, usage, batch=batch)

    def add(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """Record a response's usage (`batch`: a batch line's, at the batch price); returns
        its cost in USD (the tokens themselves are counted in the engine's `Tally`)."""
        cost = self._price_of(model, usage, batch)
        with self._lock:
            self.spent_usd += cost
        return cost

    def reserve(
        self, model: str, estimated_tokens: int, *, batch: bool = False
    ) -> Reservation | None:
        """Hold budget for a request (`batch`: a batch line, at the batch price); None means
        do not send it (the budget is reached)."""
        if self.budget_usd is None:
            return Reservation(model, estimated_tokens, 0.0)
        price = self.prices.require(model)
        usd = estimated_tokens * max(price.input, price.output) / 1e6 * self.prices.share(batch)
        with self._lock:
            if self._stopped or self.spent_usd + self.reserved_usd + usd > self.budget_usd:
                self._stopped = True
                return None
            self.reserved_usd += usd
        return Reservation(model, estimated_tokens, usd)

    def release(self, reservation: Reservation | None) -> None:
        """Give back a reservation (after `add`ing the response's real usage, or on failure)."""
        if reservation is None or reservation.usd == 0.0:
            return
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
