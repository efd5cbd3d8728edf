"""`SimulatedLVLM`: a documented simulation of a Critic/Judge LVLM, never a model.

It answers from ground truth, not from looking at images the way a model does:

- **Critic requests** (images, no response schema): the 2nd image is decoded as a cluster map
  by `lvlmva.vision.render.decode_cluster_map` (nearest palette colour, black = background;
  not a cluster map: a 400); the oracle gives the spurious mask of the 1st image (the
  original), resized nearest-neighbour to the map; a cluster is truly spurious when it has at
  least `max(1, ceil(min_overlap * its pixels))` pixels on that mask (default: one
  pixel). For each colour the simulation states the opposite of the truth with the probability
  its error model (`lvlmva.simulation.error_models`, `error_model=`) gives that cluster:
  ``independent`` (default): ``1 - verdict_accuracy`` for truly spurious clusters (the verdict
  accuracy of the reference figures in docs/method.md: the share of spurious clusters marked
  "no") and ``1 - relevant_accuracy`` for the others (default: the same figure; no published
  figure exists for it); ``ambiguity``: more often on mixed and small clusters, calibrated on a
  fixed reference. Whether a verdict is wrong is drawn from hashes of (seed, original image
  SHA-256, colour) and, for the random share ``1 - systematic`` of the errors, of the request's
  text, temperature and seed: the same request always gets the same answer, and a repeated
  sample of the question (colours listed in another order, another temperature or seed) keeps
  the systematic errors and redraws the others. An original the oracle does not know has no
  spurious region (every cluster is truly relevant).
  The answer is prose, one paragraph per colour, each ending ``Verdict for <colour>: yes|no``.
- **Judge requests** (text only): the ``Verdict for ...`` lines in the user messages are
  turned into ``{"output": [{"color", "verdict"}]}``. A critique without such lines gets a
  `BadRequest` (the simulated Judge reads only the simulated Critic's prose).
- **Fused requests** (images and a response schema): the Critic's verdicts as that JSON.
- **Token log-probabilities** (`request.top_logprobs` set; `lvlmva.simulation.logprobs`): a
  critique's verdict lines and a fused answer grade each verdict with the P("no") of a
  calibrated model, the verdict right with probability 1 - its cluster's error probability,
  never below a coin flip (`SimVerdict.p_no`): uninformative with independent errors (every
  verdict at the same confidence), lower on mixed and small clusters with ambiguity errors, an
  optimistic case for a real model's log-probabilities. A Judge answer is sure of every
  token: the critique it reads states its verdicts flatly.

Faults are drawn per request from a seeded stream (`random.Random(seed)`), so a retried request
can succeed: 429 (with `retry_after_s`, answered at once), 500, timeout (hangs for the caller's
timeout, or `timeout_hang_s`), and for JSON answers malformed JSON, schema violations and wrong
colour sets. Latency is drawn from the same stream. Token usage is estimated: text characters
/ 4, plus 85 + 170 per 512-px tile for each image (OpenAI's high-detail rule).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import random
from array import array
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from lvlmva.engine.errors import BadRequest, ProviderTimeout, RateLimited, ServerError
from lvlmva.engine.types import ChatRequest, ChatResponse, ImagePart, Message, TextPart, Usage
from lvlmva.errors import ConfigError
from lvlmva.simulation.clustermap import find_spurious
from lvlmva.simulation.critique import SimVerdict, read_verdicts, write_critique
from lvlmva.simulation.error_models import (
    DEFAULT_SYSTEMATIC,
    NEAR_BAND,
    ClusterTraits,
    build_error_model,
    is_wrong,
)
from lvlmva.simulation.faults import FaultRates, spoil_json
from lvlmva.simulation.logprobs import answer_logprobs
from lvlmva.simulation.oracle import MaskOracle
from lvlmva.vision.render import decode_cluster_map

__all__ = [
    "LatencySpec",
    "SimOutcome",
    "SimStats",
    "SimulatedLVLM",
    "request_hash",
    "sample_key",
    "simulation_identity",
]

SIMULATION_VERSION = 2  # bump when the same settings would answer differently

LatencySpec = float | tuple[float, float] | Callable[[random.Random], float]
"""Milliseconds: a constant, `(mean, jitter)` (uniform in mean +- jitter, at least 0), or a
function drawing from the simulator's seeded `random.Random`."""

OutcomeKind = Literal["ok", "429", "500", "timeout", "400"]


@dataclass(frozen=True)
class SimOutcome:
    """What the simulation decided for one request, before any waiting."""

    kind: OutcomeKind
    delay_s: float
    request_hash: str
    response: ChatResponse | None = None
    retry_after: float | None = None
    message: str = ""


@dataclass
class SimStats:
    """Counts since the start (or the last `reset`): requests received, outcomes by status
    ("200", "429", "500", "timeout", "400") and successful answers per request-content hash,
    so a client can see whether it paid twice for the same request. The HTTP server also
    records when each request arrived (`arrivals`, monotonic seconds), so a client's rate-cap
    compliance is measured where a provider measures it: `peak_in_window`."""

    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    arrivals: array[float] = field(default_factory=lambda: array("d"))

    def peak_in_window(self, seconds: float) -> int:
        """The most arrivals within any window of `seconds` (half-open, sliding)."""
        times, peak, start = self.arrivals, 0, 0
        for end, t in enumerate(times):
            while times[start] <= t - seconds:
                start += 1
            peak = max(peak, end - start + 1)
        return peak

    @property
    def duplicate_answers(self) -> int:
        """Successful answers beyond the first for identical requests."""
        return sum(n - 1 for n in self.answers.values() if n > 1)

    def to_dict(self, *, per_hash: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "simulation": True,
            "requests": self.requests,
            "by_status": dict(sorted(self.by_status.items())),
            "answered": sum(self.answers.values()),
            "distinct_answered": len(self.answers),
            "duplicate_answers": self.duplicate_answers,
            "arrivals_recorded": len(self.arrivals),
            "arrival_span_s": self.arrivals[-1] - self.arrivals[0] if self.arrivals else 0.0,
            "peak_requests_60s": self.peak_in_window(60.0),
            "peak_requests_1s": self.peak_in_window(1.0),
        }
        if per_hash:
            out["answers_by_hash"] = dict(self.answers)
        return out


def _message_texts(message: Message) -> list[str]:
    """Text of a message as an OpenAI-compatible client sends it: a text-only message is one
    string (parts joined by a blank line); a message with images keeps its parts."""
    texts = [p.text for p in message.parts if isinstance(p, TextPart)]
    if len(texts) == len(message.parts):
        return ["\n\n".join(texts)]
    return texts


def request_hash(request: ChatRequest) -> str:
    """SHA-256 of everything that determines the answer, the same for a request sent
    in-process and over HTTP (text-only messages joined as the HTTP client joins them)."""
    messages = []
    for m in request.messages:
        texts = iter(_message_texts(m))
        if all(isinstance(p, TextPart) for p in m.parts):
            parts: list[Any] = [["text", next(texts)]]
        else:
            parts = [
                ["text", p.text] if isinstance(p, TextPart) else ["image", p.sha256]
                for p in m.parts
            ]
        messages.append([m.role, parts])
    canonical = {
        "model": request.model,
        "messages": messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "schema": request.response_schema,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _identity(errors: str, systematic: float, min_overlap: float, seed: int) -> str:
    return (
        f"simulated-lvlm/v{SIMULATION_VERSION};errors={errors};systematic={systematic:g};"
        f"min_overlap={min_overlap:g};seed={seed}"
    )


def simulation_identity(
    error_model: str,
    verdict_accuracy: float,
    relevant_accuracy: float,
    systematic: float,
    min_overlap: float,
    seed: int,
) -> str:
    """`SimulatedLVLM.identity` of a simulator with these settings, without building it."""
    errors = build_error_model(error_model, verdict_accuracy, relevant_accuracy).identity
    return _identity(errors, float(systematic), float(min_overlap), int(seed))


def sample_key(request: ChatRequest) -> str:
    """Which sample of its question a request is: a hash of its text parts (the colour order
    and wording), temperature and seed; the images and the model do not enter it."""
    texts = [[m.role, _message_texts(m)] for m in request.messages]
    canonical = {"texts": texts, "temperature": request.temperature, "seed": request.seed}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def image_tokens(data: bytes) -> int:
    """OpenAI's high-detail rule: fit in 2048 x 2048, shortest side at most 768, then
    85 + 170 per 512 x 512 tile. Unreadable images count as one 768 x 768 image."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
        except Exception:
            w = h = 768
    w, h = max(w, 1), max(h, 1)
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _prompt_tokens(request: ChatRequest) -> int:
    chars = sum(len(t) for m in request.messages for t in _message_texts(m))
    images = sum(
        image_tokens(p.data) for m in request.messages for p in m.parts if isinstance(p, ImagePart)
    )
    return math.ceil(chars / 4) + images


def _schema_colors(schema: Mapping[str, Any] | None) -> list[str] | None:
    """The colour enum of a verdict schema, when the schema has one."""
    try:
        enum = schema["properties"]["output"]["items"]["properties"]["color"]["enum"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return [str(c) for c in enum] if isinstance(enum, list) else None


class SimulatedLVLM:
    """A simulated LVLM implementing the `Provider` protocol (see the module docstring).

    `palette` maps colour names to RGB in the order the cluster map uses (the vision code owns
    it: `lvlmva.vision.render.PALETTE`).
    """

    supports_structured_output = True

    def __init__(
        self,
        *,
        oracle: MaskOracle,
        palette: Mapping[str, tuple[int, int, int]],
        verdict_accuracy: float = 0.87,
        relevant_accuracy: float | None = None,
        error_model: str = "independent",
        systematic: float = DEFAULT_SYSTEMATIC,
        latency_ms: LatencySpec = 0.0,
        rate_429: float = 0.0,
        rate_500: float = 0.0,
        rate_timeout: float = 0.0,
        rate_malformed_json: float = 0.0,
        rate_schema_violation: float = 0.0,
        rate_wrong_colors: float = 0.0,
        retry_after_s: float = 1.0,
        timeout_hang_s: float | None = None,
        min_overlap: float = 0.0,
        seed: int = 0,
        name: str = "simulated",
    ) -> None:
        if not 0.0 <= verdict_accuracy <= 1.0:
            raise ConfigError(f"verdict_accuracy must be in [0, 1], got {verdict_accuracy}")
        if relevant_accuracy is not None and not 0.0 <= relevant_accuracy <= 1.0:
            raise ConfigError(f"relevant_accuracy must be in [0, 1], got {relevant_accuracy}")
        if not 0.0 <= min_overlap <= 1.0:
            raise ConfigError(f"min_overlap must be in [0, 1], got {min_overlap}")
        if not 0.0 <= systematic <= 1.0:
            raise ConfigError(f"systematic must be in [0, 1], got {systematic}")
        if not palette:
            raise ConfigError("the simulated LVLM needs a non-empty colour palette")
        for colour, rgb in palette.items():
            if len(tuple(rgb)) != 3 or not all(0 <= int(v) <= 255 for v in rgb):
                raise ConfigError(f"palette colour {colour!r} must be an RGB triple, got {rgb}")
        if retry_after_s < 0 or (timeout_hang_s is not None and timeout_hang_s < 0):
            raise ConfigError("retry_after_s and timeout_hang_s must not be negative")
        self.name = name
        self.oracle = oracle
        self.palette = {str(k): tuple(int(v) for v in rgb) for k, rgb in palette.items()}
        self.verdict_accuracy = float(verdict_accuracy)
        self.relevant_accuracy = (
            self.verdict_accuracy if relevant_accuracy is None else float(relevant_accuracy)
        )
        self.errors = build_error_model(error_model, self.verdict_accuracy, self.relevant_accuracy)
        self.systematic = float(systematic)
        self.faults = FaultRates(
            rate_429,
            rate_500,
            rate_timeout,
            rate_malformed_json,
            rate_schema_violation,
            rate_wrong_colors,
        )
        self._latency = self._latency_sampler(latency_ms)
        self.retry_after_s = float(retry_after_s)
        self.timeout_hang_s = timeout_hang_s
        self.min_overlap = float(min_overlap)
        self.seed = int(seed)
        self._rng = random.Random(self.seed)
        self.stats = SimStats()

    @staticmethod
    def _latency_sampler(spec: LatencySpec) -> Callable[[random.Random], float]:
        if callable(spec):
            return spec
        if isinstance(spec, tuple):
            mean, jitter = (float(v) for v in spec)
            if mean < 0 or jitter < 0:
                raise ConfigError(f"latency (mean, jitter) must not be negative, got {spec}")
            return lambda rng: max(0.0, mean + jitter * (2.0 * rng.random() - 1.0))
        value = float(spec)
        if value < 0:
            raise ConfigError(f"latency_ms must not be negative, got {value}")
        return lambda rng: value

    def reset(self) -> None:
        """Zero the counts and restart the fault/latency stream from the seed."""
        self.stats = SimStats()
        self._rng = random.Random(self.seed)

    # -- answers ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """Everything that decides this simulation's answers, as one string (for cache keys):
        the version, the error model with its settings, the systematic share, the overlap rule
        and the seed. Latency and fault rates do not change an answer and are left out."""
        return _identity(self.errors.identity, self.systematic, self.min_overlap, self.seed)

    def critic_verdicts(
        self, original: bytes, cluster_map: bytes, *, sample: str = ""
    ) -> list[SimVerdict]:
        """The simulated Critic's verdict per colour of `cluster_map` (palette order), for the
        sample `sample` of the question (`sample_key` of the request)."""
        try:
            decoded = decode_cluster_map(cluster_map, self.palette)
        except ValueError as exc:
            raise BadRequest(f"simulated critic: {exc}", status=400) from None
        image_sha = hashlib.sha256(original).hexdigest()
        mask = self.oracle.lookup(image_sha)
        band = NEAR_BAND if self.errors.name != "independent" else 0.0
        area = decoded.labels.size
        out = []
        for finding in find_spurious(decoded, mask, min_overlap=self.min_overlap, band=band):
            p = self.errors.error_probability(ClusterTraits.of(finding, area))
            wrong = is_wrong(p, self.systematic, (self.seed, image_sha, finding.color), sample)
            says_spurious = finding.spurious != wrong
            out.append(
                SimVerdict(
                    color=finding.color,
                    relevant=not says_spurious,
                    truly_spurious=finding.spurious,
                    row=finding.row,
                    col=finding.col,
                    share=finding.share,
                    error_probability=p,
                )
            )
        return out

    def _answer(
        self, request: ChatRequest
    ) -> tuple[str, list[tuple[str, str]] | None, dict[str, float] | None]:
        """The answer text, for JSON answers the (colour, verdict) entries, and for verdicts
        given with the images (a critique's lines, a fused answer) the P("no") of each colour
        (`SimVerdict.p_no`). A Judge that reads a critique is sure of what it says: the
        critique states its verdicts flatly."""
        images = [p for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        if images:
            if len(images) < 2:
                raise BadRequest(
                    "simulated critic: needs the original and the cluster map as the first two "
                    f"images, got {len(images)} image(s)",
                    status=400,
                )
            verdicts = self.critic_verdicts(
                images[0].data, images[1].data, sample=sample_key(request)
            )
            p_no = {v.color: v.p_no for v in verdicts}
            if request.response_schema is None:
                return write_critique(verdicts, key=images[0].sha256), None, p_no
            entries = [(v.color, "yes" if v.relevant else "no") for v in verdicts]
            text = json.dumps({"output": [{"color": c, "verdict": v} for c, v in entries]})
            return text, entries, p_no
        allowed = _schema_colors(request.response_schema) or list(self.palette)
        text = "\n".join(t for m in request.messages if m.role == "user" for t in _message_texts(m))
        found = read_verdicts(text, allowed)
        if not found:
            raise BadRequest(
                "simulated judge: the request holds no 'Verdict for <colour>: yes|no' lines; "
                "it can only read critiques written by the simulated critic",
                status=400,
            )
        entries = [(c, "yes" if relevant else "no") for c, relevant in found]
        text = json.dumps({"output": [{"color": c, "verdict": v} for c, v in entries]})
        return text, entries, None

    def plan(self, request: ChatRequest) -> SimOutcome:
        """Decide the outcome of `request` (draws from the fault/latency stream; counts the
        request). The caller waits `delay_s`, then calls `deliver`."""
        self.stats.requests += 1
        key = request_hash(request)
        fault = self.faults.transport(self._rng)
        delay = self._latency(self._rng) / 1000.0
        if fault == "429":
            return SimOutcome(
                "429",
                0.0,
                key,
                retry_after=self.retry_after_s,
                message="simulated rate limit: too many requests",
            )
        if fault == "500":
            return SimOutcome("500", delay, key, message="simulated internal server error")
        if fault == "timeout":
            return SimOutcome("timeout", delay, key, message="simulated hang")
        try:
            text, entries, p_no = self._answer(request)
        except BadRequest as exc:
            return SimOutcome("400", 0.0, key, message=str(exc))
        if entries is not None:
            spoil = self.faults.json(self._rng)
            if spoil is not None:
                text, p_no = spoil_json(entries, spoil, self._rng, list(self.palette)), None
        completion = math.ceil(len(text) / 4)
        if completion > request.max_tokens > 0:
            text = text[: request.max_tokens * 4]
            completion = request.max_tokens
        logprobs = None
        if request.top_logprobs is not None:
            logprobs = answer_logprobs(text, p_no, request.top_logprobs)
        usage = Usage(_prompt_tokens(request), completion)
        response = ChatResponse(text, usage, request.model, logprobs=logprobs)
        return SimOutcome("ok", delay, key, response=response)

    def deliver(self, outcome: SimOutcome) -> None:
        """Count a finished outcome (status, and the answer of a successful one)."""
        status = "200" if outcome.kind == "ok" else outcome.kind
        self.stats.by_status[status] += 1
        if outcome.kind == "ok":
            self.stats.answers[outcome.request_hash] += 1

    # -- Provider protocol -----------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        outcome = self.plan(request)
        if outcome.kind == "timeout":
            hang = timeout if self.timeout_hang_s is None else min(timeout, self.timeout_hang_s)
            await asyncio.sleep(max(0.0, hang))
            self.deliver(outcome)
            raise ProviderTimeout(f"simulated LVLM did not answer within {timeout:g} s")
        if outcome.delay_s > timeout:
            await asyncio.sleep(max(0.0, timeout))
            self.deliver(SimOutcome("timeout", outcome.delay_s, outcome.request_hash))
            raise ProviderTimeout(f"simulated LVLM did not answer within {timeout:g} s")
        if outcome.delay_s > 0:
            await asyncio.sleep(outcome.delay_s)
        self.deliver(outcome)
        if outcome.kind == "429":
            raise RateLimited(outcome.message, status=429, retry_after=outcome.retry_after)
        if outcome.kind == "500":
            raise ServerError(outcome.message, status=500)
        if outcome.kind == "400":
            raise BadRequest(outcome.message, status=400)
        assert outcome.response is not None
        return outcome.response

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"SimulatedLVLM(simulation, verdict_accuracy={self.verdict_accuracy}, "
            f"relevant_accuracy={self.relevant_accuracy}, errors={self.errors.name}, "
            f"systematic={self.systematic}, faults={self.faults}, seed={self.seed})"
        )
