"""Token estimates, a price table and a cost meter with an optional budget.

The default prices are OpenAI's list prices (standard tier, USD per 1M tokens: input, cached
input, output) for the models named below, as its pricing page
(developers.openai.com/api/docs/pricing) gave them on 2026-12-01, read through restatements
that cite it (that page is not reachable from where this was written; see docs/real_endpoints.md).
Providers change them: override them with `PriceTable.from_file` (JSON, YAML or TOML):

    {"gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10.0},
     "my-vllm-model": {"input": 0, "output": 0}}

(optionally nested under a top-level "models" key; `cached_input` defaults to `input`; beside
"models", `"batch_share": 0.5` sets the share of these prices a Batch API request pays).

Batch prices: OpenAI bills Batch API requests at 50% of the synchronous price, input and
output tokens alike (its pricing page; restated in community.openai.com thread 1357069); the
cost calls take `batch=True` for them (`BATCH_SHARE`, per table `PriceTable.batch_share`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lvlmva.engine.errors import BudgetReached
from lvlmva.engine.model_params import image_detail, image_size, rules_for
from lvlmva.engine.types import ChatRequest, ImagePart, TextPart, Usage
from lvlmva.errors import ConfigError

__all__ = [
    "BATCH_SHARE",
    "DEFAULT_PRICES",
    "PRICES_READ_ON",
    "CostMeter",
    "Hold",
    "ModelPrice",
    "PriceTable",
    "Reservation",
    "estimate_image_tokens",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
]

log = logging.getLogger(__name__)

BATCH_SHARE = 0.5  # the share of the synchronous price a Batch API request pays
PRICES_READ_ON = "2026-12-01"


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M input (prompt) and output (completion) tokens, and per 1M cached input
    tokens (prompt tokens served from the provider's prompt cache; None: the input price).
    Reasoning tokens are output tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (usage.prompt_tokens - cached) * self.input
            + cached * cached_price
            + usage.completion_tokens * self.output
        ) / 1e6


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25),
    "gpt-4o-2024-05-13": ModelPrice(5.00, 15.00),  # the first snapshot kept its own price
    "chatgpt-4o-latest": ModelPrice(5.00, 15.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, 0.025),
    "o1": ModelPrice(15.00, 60.00, 7.50),
    "o3": ModelPrice(2.00, 8.00, 0.50),
    "o3-mini": ModelPrice(1.10, 4.40, 0.55),
    "o4-mini": ModelPrice(1.10, 4.40, 0.275),
    "gpt-5": ModelPrice(1.25, 10.00, 0.125),
    "gpt-5-mini": ModelPrice(0.25, 2.00, 0.025),
    "gpt-5-nano": ModelPrice(0.05, 0.40, 0.005),
    "gpt-5-pro": ModelPrice(15.00, 120.00),
    "gpt-5.1": ModelPrice(1.25, 10.00, 0.125),
    "gpt-5.2": ModelPrice(1.75, 14.00, 0.175),
    "gpt-5.2-pro": ModelPrice(21.00, 168.00),
}
_SNAPSHOT = re.compile(r"(?P<name>.+)-\d{4}-\d{2}-\d{2}\Z")


class PriceTable:
    """Prices per model. Lookup: the exact name, then without a "provider/" prefix, then, for
    a dated snapshot (gpt-4o-2024-08-06), the name it is a snapshot of. Nothing else: a
    variant such as gpt-5-pro is never priced as gpt-5 (an unknown name has no price)."""

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
        snapshot = _SNAPSHOT.match(bare)
        return self.prices.get(snapshot.group("name")) if snapshot else None

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


_PRICE_KEYS = ("input", "output", "cached_input")


def _parse_price(path: Path, model: str, entry: Any) -> ModelPrice:
    if not isinstance(entry, dict) or set(entry) - set(_PRICE_KEYS) or not entry:
        raise ConfigError(
            f'price file {path}: model {model!r} needs {{"input": USD per 1M tokens, '
            f'"output": USD per 1M tokens[, "cached_input": USD per 1M tokens]}}, got {entry!r}'
        )
    values: dict[str, float | None] = {}
    for key in _PRICE_KEYS:
        value = entry.get(key, None if key == "cached_input" else 0.0)
        if value is None and key == "cached_input":
            values[key] = None
            continue
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
    return ModelPrice(values["input"], values["output"], values["cached_input"])  # type: ignore[arg-type]


# -- token estimates ----------------------------------------------------------------------------

_TOKENS_PER_MESSAGE = 4
_UNKNOWN_SIDE = 768  # an image whose size cannot be read counts as 768 x 768, high detail


def estimate_image_tokens(
    width: int, height: int, *, model: str = "gpt-4o", detail: str = "high"
) -> int:
    """Input tokens of one image for `model` (its family's rule, `model_params`; a model of
    one's own is counted as gpt-4o) at `detail` ("auto" counted as "high")."""
    rule = rules_for(model).images or rules_for("gpt-4o").images
    assert rule is not None
    if width <= 0 or height <= 0:
        width = height = _UNKNOWN_SIDE
        detail = "high"
    return rule.tokens(width, height, detail if detail in ("low", "high") else "high")  # type: ignore[arg-type]


def _image_tokens(part: ImagePart, request: ChatRequest) -> int:
    width, height = image_size(part) or (0, 0)
    detail = image_detail(part, request.image_detail, rules_for(request.model)) or "auto"
    return estimate_image_tokens(width, height, model=request.model, detail=detail)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Prompt tokens: text at about 4 characters a token, images by the model family's rule at
    the detail they are sent with."""
    tokens = 3
    for message in request.messages:
        tokens += _TOKENS_PER_MESSAGE
        for part in message.parts:
            if isinstance(part, TextPart):
                tokens += math.ceil(len(part.text) / 4)
            else:
                tokens += _image_tokens(part, request)
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
    """Budget held for one request in flight by `CostMeter.reserve_call` (worst case); give it back
    with `CostMeter.release`."""

    model: str
    tokens: int
    usd: float


class Spending(Protocol):
    """What a hold reads its spending from: a job's ledger (`lvlmva.engine.stats.Ledger`)."""

    cost_usd: float


@dataclass(eq=False)
class Hold:
    """Budget held for one job: `amount` USD expected, less what the job has spent so far
    (read from its ledger, which the dispatcher books every response on). Released with
    `CostMeter.release_hold` when the job ends."""

    amount: float
    spending: Spending
    start: float = 0.0  # the ledger's cost when the hold was taken

    @property
    def outstanding(self) -> float:
        return max(0.0, self.amount - (self.spending.cost_usd - self.start))


@dataclass
class CostMeter:
    """Running cost of the responses seen, with an optional budget.

    The engine holds budget per job (`hold`): what the job is expected to cost (its Critic and
    Judge together, from the costs seen so far), reconciled with what it really spends as its
    answers arrive. A job is admitted when spent + the outstanding holds + its expectation fit
    the budget; when they do not and other jobs hold budget, it waits for them (they may cost
    less than expected); when nothing is held and it still does not fit, the budget is reached
    and stays reached. The cap itself is per call: `reserve_call` holds a call's worst case
    before it is sent and `release` gives it back once its cost was `add`ed, so the total never
    passes the budget. Without a budget, unknown models cost 0 (warned once); with one they
    raise `ConfigError`, since their cost could not be bounded."""

    prices: PriceTable = field(default_factory=PriceTable)
    budget_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    possibly_billed_usd: float = 0.0  # worst cases of requests that timed out (`timed_out`)
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _holds: set[Hold] = field(default_factory=set, repr=False)
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)
    _calls: int = 0  # reservations not yet released
    _call_waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.budget_usd is not None and not self.budget_usd > 0:
            raise ConfigError(f"budget must be a positive number of USD (got {self.budget_usd})")

    @property
    def committed_usd(self) -> float:
        """What the budget counts as gone: spent, plus what timed-out requests may have cost."""
        return self.spent_usd + self.possibly_billed_usd

    def _gone(self) -> str:
        gone = f"spent ${self.spent_usd:.4f}"
        if self.possibly_billed_usd:
            gone += f", timed-out requests may have cost up to ${self.possibly_billed_usd:.4f}"
        return gone

    @property
    def budget_reached(self) -> bool:
        if self.budget_usd is None:
            return False
        return self._stopped or self.committed_usd >= self.budget_usd

    @property
    def held_usd(self) -> float:
        """Budget held for calls and jobs in flight, not yet spent."""
        return self.reserved_usd + sum(h.outstanding for h in self._holds)

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(0.0, self.budget_usd - self.committed_usd - self.held_usd)

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

    def timed_out(self, model: str, estimated_tokens: int) -> float:
        """A request got no answer in time: the endpoint may still have run and billed it. Its
        worst case (`worst_case`) is counted apart, in `possibly_billed_usd`, and the budget
        counts it as gone; returns it (0 when the model has no price and there is no budget)."""
        if self.budget_usd is None and self.prices.lookup(model) is None:
            return 0.0
        usd = self.worst_case(model, estimated_tokens)
        with self._lock:
            self.possibly_billed_usd += usd
        return usd

    def check_resend(self) -> None:
        """Before a timed-out call goes out again (its first send may have used its reservation,
        `timed_out`): `BudgetReached` unless what is gone and what calls hold fit the budget."""
        if self.budget_usd is None or self.committed_usd + self.reserved_usd <= self.budget_usd:
            return
        raise BudgetReached(
            f"not sent again, the budget of ${self.budget_usd:g} may be reached: requests that "
            f"timed out may have been billed up to ${self.possibly_billed_usd:.4f}"
        )

    # -- per job: expected cost, reconciled ---------------------------------------------------

    def try_hold(self, usd: float, spending: Spending) -> Hold | None:
        """Hold `usd` for a job if it fits now (always without a budget), else None."""
        if self.budget_usd is None:
            return Hold(0.0, spending, spending.cost_usd)
        if self._stopped or self.committed_usd + self.held_usd + usd > self.budget_usd:
            return None
        hold = Hold(usd, spending, spending.cost_usd)
        self._holds.add(hold)
        return hold

    async def hold(self, expected: float | Callable[[], float], spending: Spending) -> Hold:
        """Hold `expected` USD (or `expected()`) for a job, waiting (first come, first
        served) while jobs in flight hold budget that may come back; `BudgetReached` once
        nothing is held and it cannot fit. The expectation is asked again after each wait:
        jobs that finished meanwhile tell what a job really costs."""
        if self.budget_usd is None:
            return Hold(0.0, spending, spending.cost_usd)
        queued = bool(self._waiters)  # a newcomer waits behind those already waiting
        while True:
            usd = expected() if callable(expected) else expected
            if not self._stopped and not queued:
                hold = self.try_hold(usd, spending)
                if hold is not None:
                    self._wake()  # the next in line may fit too
                    return hold
                if not self._holds:
                    self._stop()
            if self._stopped:
                raise BudgetReached(
                    f"not sent, the budget of ${self.budget_usd:g} is reached ({self._gone()}; "
                    f"a job is expected to cost ${usd:.4f})"
                )
            queued = False
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    self._wake()  # cancelled in line: let the next one try

    def release_hold(self, hold: Hold | None) -> None:
        """The job ended: what it did not spend of its hold is free again."""
        if hold is None or hold not in self._holds:
            return
        self._holds.discard(hold)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _stop(self) -> None:
        self._stopped = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- per call: worst case ------------------------------------------------------------------

    def worst_case(self, model: str, estimated_tokens: int, share: float = 1.0) -> float:
        """USD a call of `estimated_tokens` (prompt estimate + max_tokens) may cost: all of them
        at the model's higher per-token price, times `share` (the batch share for a batch line)."""
        price = self.prices.require(model)
        return estimated_tokens * max(price.input, price.output) / 1e6 * share

    async def reserve_call(
        self, model: str, estimated_tokens: int, *, share: float = 1.0
    ) -> Reservation:
        """The hard cap: hold the worst case of one call (`worst_case`) if it fits the budget
        less what was spent and what the calls in flight hold; else wait while they may give
        some back. Once none is in flight and it still does not fit, the budget is reached
        (`BudgetReached`); a later call that fits, of a job already running, still goes."""
        if self.budget_usd is None:
            return Reservation(model, estimated_tokens, 0.0)
        usd = self.worst_case(model, estimated_tokens, share)
        while True:
            with self._lock:
                if self.committed_usd + self.reserved_usd + usd <= self.budget_usd:
                    self.reserved_usd += usd
                    self._calls += usd > 0
                    return Reservation(model, estimated_tokens, usd)
                in_flight = self._calls > 0
            if not in_flight:
                self._stop()
                raise BudgetReached(
                    f"not sent, the budget of ${self.budget_usd:g} is reached ({self._gone()}; "
                    f"this call may cost up to ${usd:.4f})"
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._call_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._call_waiters:
                    self._call_waiters.remove(waiter)

    def release(self, reservation: Reservation | None) -> None:
        """Give back a reservation (after `add`ing the response's real usage, or on failure)."""
        if reservation is None or reservation.usd == 0.0:
            return
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
            self._calls -= 1
        waiters, self._call_waiters = self._call_waiters, []
        for waiter in waiters:  # each looks again
            if not waiter.done():
                waiter.set_result(None)
        self._wake()
