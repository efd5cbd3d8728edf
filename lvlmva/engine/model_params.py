"""What each model family takes in a chat-completions request, and how it counts image tokens.

`rules_for(model)` looks a model name up: the exact name first, then a dated snapshot of a known
name (`gpt-4o-2024-08-06` -> `gpt-4o`), then the family patterns (any `o3-...`, any `gpt-5...`);
a litellm-style `provider/` prefix is ignored, and a fine-tuned model (OpenAI's
`ft:BASE:ORG:SUFFIX:ID`, the suffix possibly empty) is looked up as its BASE. A name that matches
nothing is served by a server of one's own (vLLM, Ollama, llama.cpp) and gets `GENERIC` (which
sends the temperature asked for: `temperature=None` leaves it out).

Sources (read 2026-12-01):

- [spec] openai/openai-openapi, `CreateChatCompletionRequest`: `max_tokens` is deprecated in
  favour of `max_completion_tokens` ("not compatible with o-series models"), and
  `max_completion_tokens` bounds visible and reasoning tokens; `ReasoningEffort` values.
- [reasoning] gpt-5, -mini, -nano and the o-series take only the default temperature / top_p
  (a 400 "Only the default (1) value is supported" otherwise) and refuse `max_tokens`, as the
  API's own errors quoted in griptape-ai/ComfyUI-Griptape#312 and gabrii/Cursor-Azure-GPT-5#33
  say; gpt-5.1 / gpt-5.2 take sampling parameters only with `reasoning_effort: "none"`, their
  default (latest-model guide, "GPT-5.1 parameter compatibility", cited in vercel/ai#10940).
  Efforts per family as in docs/openai_standin.md (minimal exists on gpt-5 / -mini / -nano).
- [vision] OpenAI's images-and-vision guide, "Calculating costs", as restated in
  openai/openai-python#2851 and xn1cklas/tokenlens#7: tile models fit the image in
  2048 x 2048, scale its short side down to 768, then pay base + tile per 512-px tile (low
  detail: the base only); patch models count 32-px patches (at most 1,536, shrinking the image
  to fit) times a multiplier, whatever the detail.
- [servers] Ollama's OpenAI layer reads `max_tokens` only (ollama/ollama `openai/openai.go`,
  `ChatCompletionRequest`) and ignores unknown fields, so `max_completion_tokens` would leave a
  local model unbounded; vLLM and llama.cpp take `max_tokens` too. A server of one's own gets
  `max_tokens` (override with the provider's `max_tokens_param`).

The stand-in's `lvlmva.simulation.openai_models` holds the same image rules, written from the same
guide; the engine does not import the simulation, so `tests/test_model_params.py` compares the two.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from dataclasses import dataclass
from typing import Literal

from lvlmva.engine.types import ImagePart
from lvlmva.errors import ConfigError

__all__ = [
    "DETAILS",
    "GENERIC",
    "ImageRule",
    "ModelRules",
    "check_effort",
    "check_efforts",
    "image_detail",
    "image_size",
    "rules_for",
    "takes_effort",
]

Detail = Literal["auto", "low", "high"]
DETAILS = ("fit", "auto", "low", "high")  # "fit": low when the image fits LOW_DETAIL_SIDE
LOW_DETAIL_SIDE = 512  # the low-detail version is 512 x 512: a smaller image loses no pixel
Sampling = Literal["free", "default_only", "only_without_reasoning"]


PATCH, TILE = 32, 512  # px: a patch model's patch, a tile model's tile
FIT_BOX, SHORT_SIDE = 2048, 768  # a tile model first fits the image in 2048 x 2048, then 768


def _cells(length: float, cell: int) -> int:
    """Cells of `cell` px covering `length` px (float noise such as 1408.0000000002 / 32
    counts as 44, not 45)."""
    return max(1, math.ceil(length / cell - 1e-9))


def tile_count(width: int, height: int) -> int:
    """512-px tiles of an image once fitted in 2048 x 2048 and its short side brought down
    to 768 (neither step enlarges it)."""
    fit = min(1.0, FIT_BOX / max(width, height))
    fit *= min(1.0, SHORT_SIDE / (min(width, height) * fit))
    return _cells(width * fit, TILE) * _cells(height * fit, TILE)


def patch_count(width: int, height: int, budget: int) -> int:
    """32-px patches of an image; past `budget` the image is shrunk, aspect kept, by the
    factor that brings its area to `budget` patches, then to whole patches on its tighter
    side (the guide's examples: 1024 x 1024 -> 1024; 1800 x 2400 -> 1452)."""
    if _cells(width, PATCH) * _cells(height, PATCH) <= budget:
        return _cells(width, PATCH) * _cells(height, PATCH)
    factor = math.sqrt(budget * PATCH * PATCH / (width * height))
    tighter = min(
        math.floor(side * factor / PATCH) / (side * factor / PATCH) for side in (width, height)
    )
    factor *= tighter
    return min(budget, _cells(width * factor, PATCH) * _cells(height * factor, PATCH))


@dataclass(frozen=True)
class ImageRule:
    """How a family counts an image's input tokens (see [vision]): a tile model pays `base`
    plus `tile` per 512-px tile (low detail: `base` alone); a patch model (`per_patch` set)
    pays `per_patch` tokens per 32-px patch, at most `patch_budget` patches, whatever the
    detail."""

    base: int = 0
    tile: int = 0
    per_patch: float | None = None
    patch_budget: int = 1536

    def tokens(self, width: int, height: int, detail: Detail) -> int:
        """Input tokens of one `width` x `height` image; `auto` is counted as `high` (the API
        chooses; the dearer reading bounds the cost)."""
        width, height = max(int(width), 1), max(int(height), 1)
        if self.per_patch is not None:
            return math.floor(patch_count(width, height, self.patch_budget) * self.per_patch + 0.5)
        return self.base if detail == "low" else self.base + self.tile * tile_count(width, height)


@dataclass(frozen=True)
class ModelRules:
    """The request parameters of a family. `token_param` names the output budget;
    `sampling` says when a temperature may be sent (`default_only`: never, it is left out;
    `only_without_reasoning`: only with effort "none"); `efforts` are the `reasoning_effort`
    values taken (None: not known, passed through; empty: the model takes none);
    `default_max_tokens` is the output budget when none is set (reasoning models spend part of
    it thinking); `images` counts image tokens (None: no image input); `sends_detail`: the
    server reads `detail` (OpenAI's own models)."""

    family: str
    token_param: Literal["max_tokens", "max_completion_tokens"]
    sampling: Sampling
    efforts: tuple[str, ...] | None
    default_effort: str | None
    reasoning: bool
    default_max_tokens: int
    max_output_tokens: int | None
    images: ImageRule | None
    sends_detail: bool = True

    def temperature(self, wanted: float | None, effort: str | None) -> float | None:
        """The temperature to send (None: leave it out, the model allows only its default)."""
        return wanted if self._samples_freely(effort) else None

    def top_logprobs(self, wanted: int | None, effort: str | None) -> int | None:
        """How many token alternatives to ask for (None: ask for no log-probabilities; the
        API refuses `logprobs` where it refuses a temperature: reasoning models)."""
        return wanted if self._samples_freely(effort) else None

    def _samples_freely(self, effort: str | None) -> bool:
        if self.sampling == "default_only":
            return False
        if self.sampling == "only_without_reasoning":
            return (effort or self.default_effort) == "none"
        return True

    def max_tokens(self, wanted: int | None) -> int:
        """The output budget: `wanted`, else the family default, within the model's limit."""
        budget = self.default_max_tokens if wanted is None else wanted
        return min(budget, self.max_output_tokens) if self.max_output_tokens else budget


_TILES_4O = ImageRule(85, 170)
_TILES_O = ImageRule(75, 150)
_TILES_5 = ImageRule(70, 140)
_MINI, _NANO = ImageRule(per_patch=1.62), ImageRule(per_patch=2.46)
_O_EFFORTS = ("low", "medium", "high")
_GPT5_EFFORTS = ("minimal", "low", "medium", "high")
CHAT_BUDGET, REASONING_BUDGET = 1024, 4096


def _chat(family: str, images: ImageRule, out: int) -> ModelRules:
    return ModelRules(
        family, "max_completion_tokens", "free", (), None, False, CHAT_BUDGET, out, images
    )


def _reasoner(
    family: str,
    images: ImageRule | None,
    efforts: tuple[str, ...] | None = _O_EFFORTS,
    default: str | None = "medium",
    sampling: Sampling = "default_only",
    out: int = 100_000,
) -> ModelRules:
    return ModelRules(
        family, "max_completion_tokens", sampling, efforts, default, True, REASONING_BUDGET, out,
        images,
    )  # fmt: skip


GENERIC = ModelRules(
    "generic", "max_tokens", "free", None, None, False, CHAT_BUDGET, None, _TILES_4O, False
)

# Exact names (a dated snapshot of one is looked up as the name itself).
KNOWN: dict[str, ModelRules] = {
    "gpt-4o": _chat("gpt-4o", _TILES_4O, 16_384),
    "chatgpt-4o-latest": _chat("gpt-4o", _TILES_4O, 16_384),
    "gpt-4o-mini": _chat("gpt-4o-mini", ImageRule(2833, 5667), 16_384),
    "gpt-4.1": _chat("gpt-4.1", _TILES_4O, 32_768),
    "gpt-4.1-mini": _chat("gpt-4.1-mini", _MINI, 32_768),
    "gpt-4.1-nano": _chat("gpt-4.1-nano", _NANO, 32_768),
    "o1": _reasoner("o1", _TILES_O),
    "o3": _reasoner("o3", _TILES_O),
    "o3-mini": _reasoner("o3-mini", None),
    "o4-mini": _reasoner("o4-mini", ImageRule(per_patch=1.72)),
    "gpt-5": _reasoner("gpt-5", _TILES_5, _GPT5_EFFORTS, out=128_000),
    "gpt-5-mini": _reasoner("gpt-5-mini", _MINI, _GPT5_EFFORTS, out=128_000),
    "gpt-5-nano": _reasoner("gpt-5-nano", _NANO, _GPT5_EFFORTS, out=128_000),
    "gpt-5-pro": _reasoner("gpt-5-pro", _TILES_5, ("high",), "high", out=272_000),
    "gpt-5.1": _reasoner(
        "gpt-5.1", _TILES_5, ("none", "low", "medium", "high"), "none",
        "only_without_reasoning", 128_000,
    ),
    "gpt-5.2": _reasoner(
        "gpt-5.2", _TILES_5, ("none", "low", "medium", "high", "xhigh"), "none",
        "only_without_reasoning", 128_000,
    ),
}  # fmt: skip

# Families of names not listed above: first match wins.
FAMILIES: tuple[tuple[re.Pattern[str], ModelRules], ...] = (
    (re.compile(r"o\d(?:-|\Z)"), _reasoner("o-series", _TILES_O, None)),
    (re.compile(r"gpt-5"), _reasoner("gpt-5", _TILES_5, None, None)),
)
_SNAPSHOT = re.compile(r"(?P<name>.+)-\d{4}-\d{2}-\d{2}\Z")
_FINE_TUNED = re.compile(r"ft:(?P<base>[^:]+):")  # ft:BASE:ORG:SUFFIX:ID


@functools.lru_cache(maxsize=512)
def rules_for(model: str) -> ModelRules:
    """The rules of `model` (see the module docstring for the lookup order)."""
    bare = model.rsplit("/", 1)[-1]
    tuned = _FINE_TUNED.match(bare)
    if tuned:
        bare = tuned.group("base")
    found = KNOWN.get(bare)
    if found is None:
        snapshot = _SNAPSHOT.match(bare)
        found = KNOWN.get(snapshot.group("name")) if snapshot else None
    if found is None:
        found = next((rules for pattern, rules in FAMILIES if pattern.match(bare)), GENERIC)
    return found


def check_efforts(
    critic_model: str, judge_model: str, effort: str | None, judge_effort: str | None
) -> None:
    """ConfigError when the efforts asked for cannot be sent: `effort` goes to whichever of
    the two models takes a reasoning effort (one of them must), `judge_effort` to the Judge."""
    if effort is not None:
        takers = [m for m in dict.fromkeys((critic_model, judge_model)) if takes_effort(m)]
        if not takers:
            raise ConfigError(
                f"--reasoning-effort {effort}: neither {critic_model} nor {judge_model} is a "
                "reasoning model"
            )
        for model in takers:
            check_effort(model, effort)
    check_effort(judge_model, judge_effort)


def takes_effort(model: str) -> bool:
    """Whether `model` takes `reasoning_effort` (unknown models are given the benefit)."""
    return rules_for(model).efforts != ()


def check_effort(model: str, effort: str | None) -> None:
    """ConfigError when `model` does not take `reasoning_effort` `effort`."""
    if effort is None:
        return
    efforts = rules_for(model).efforts
    if efforts is None or effort in efforts:
        return
    if not efforts:
        raise ConfigError(f"{model} is not a reasoning model: it takes no --reasoning-effort")
    raise ConfigError(
        f"{model} takes --reasoning-effort {' | '.join(efforts)}, not {effort!r}"
    )


def image_size(part: ImagePart) -> tuple[int, int] | None:
    """The pixel size of an image: given on the part, else read from its PNG header."""
    if part.width > 0 and part.height > 0:
        return part.width, part.height
    data = part.data
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def image_detail(part: ImagePart, policy: str | None, rules: ModelRules) -> Detail | None:
    """The `detail` an image is sent with under `policy`: None (none sent: the server decides,
    as with `auto`), an explicit detail, or "fit": low when the image fits in 512 x 512 (its
    low version then holds every pixel), high otherwise or when its size is unknown. "fit" is
    OpenAI's: a server of one's own (`sends_detail` False) gets no detail from it."""
    if policy is None or policy in ("auto", "low", "high"):
        return policy  # type: ignore[return-value]
    if policy != "fit":
        raise ConfigError(f"image detail must be one of {', '.join(DETAILS)}, got {policy!r}")
    if not rules.sends_detail:
        return None
    size = image_size(part)
    return "low" if size is not None and max(size) <= LOW_DETAIL_SIDE else "high"
