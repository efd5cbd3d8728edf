"""Model families the OpenAI stand-in serves, as data: which parameters each accepts, how it
counts image tokens, its output and context limits.

Sources (cited per entry in `source`):

- [spec] openai/openai-openapi@f85dbe2 `openapi.yaml`: `CreateChatCompletionRequest`
  (`max_tokens` "not compatible with o-series models"), `ReasoningEffort` (none, minimal, low,
  medium, high, xhigh, max; "not all reasoning models support every value"), `ModelIdsShared`
  (model ids and dated snapshots); the first commit of that repository (5162af9) still carried
  the per-model notes: gpt-5.1 defaults to `none`; models before gpt-5.1 default to `medium` and
  do not support `none`; `xhigh` exists from gpt-5.1-codex-max on.
- [reasoning] reasoning models take only `max_completion_tokens` and only the default sampling
  parameters (temperature/top_p 1; no penalties, no logprobs): the API's own errors as quoted in
  griptape-ai/ComfyUI-Griptape#312 (gpt-5), teilomillet/gollm#33 (o1, o3-mini),
  gabrii/Cursor-Azure-GPT-5#33 (gpt-5 temperature), OpenHands/OpenHands#4131 (o1-mini).
- [latest-model] gpt-5.1 and gpt-5.2 accept temperature, top_p and logprobs only with
  `reasoning_effort: "none"` (platform.openai.com/docs/guides/latest-model#gpt-5-1-parameter-
  compatibility, as cited by vercel/ai#10940 and #11174; gpt-5, -mini, -nano reject them always).
- [effort] minimal exists on gpt-5 / -mini / -nano, not on gpt-5.1 (community.openai.com thread
  1371738's measured matrix; qiita.com/hanaya/items/51720cb429d543874abe).
- [vision] "Calculating costs" of OpenAI's images-and-vision guide, as quoted in
  community.openai.com threads 1262691, 1230130, 1344040 and DESIGN.md: tile models pay
  base + tile tokens per 512-px tile after fitting in 2048 x 2048 and scaling the short side to
  768 (low detail: the base only): gpt-4o / gpt-4.1 85 + 170, gpt-4o-mini 2,833 + 5,667, o1 / o3
  75 + 150, gpt-5 70 + 140. Patch models count 32-px patches (at most 1,536, shrinking the image
  to fit) times a multiplier: gpt-4.1-mini and gpt-5-mini 1.62, gpt-4.1-nano and gpt-5-nano
  2.46, o4-mini 1.72; detail does not change their count.
- [limits] context window and max output tokens: each model's page on platform.openai.com/docs/
  models (the figures published at release).
- [fine-tuned] a fine-tuned model is named `ft:BASE:ORG:SUFFIX:ID` (the spec's `FineTuningJob`
  example: `ft:davinci-002:my-org:custom_suffix:7q8mpxmy`; the suffix may be empty), and a
  checkpoint of one adds `:ckpt-step-N` (`FineTuningJobCheckpoint`: `ft:gpt-4o-mini-2024-07-18:
  my-org:custom-suffix:96olL566:ckpt-step-2000`). It takes its base model's parameters; that
  the API answers with the fine-tuned name in `model` is assumed.

Where the stand-in had to choose without a source it says so in `source` ("assumed").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CUSTOM",
    "FAMILIES",
    "ImageRule",
    "ModelFamily",
    "family_for",
    "openai_model_ids",
]

Detail = Literal["auto", "low", "high"]
Sampling = Literal["free", "default_only", "only_without_reasoning"]


@dataclass(frozen=True)
class ImageRule:
    """How a family counts an image's input tokens (see [vision] in the module docstring)."""

    kind: Literal["tiles", "patches"]
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0
    max_patches: int = 1536

    def tokens(self, width: int, height: int, detail: Detail) -> int:
        """Input tokens of one `width` x `height` image; `auto` counts as `high` (the API picks
        itself; the stand-in takes the dearer reading)."""
        width, height = max(int(width), 1), max(int(height), 1)
        if self.kind == "patches":
            return int(_patches(width, height, self.max_patches) * self.multiplier + 0.5)
        if detail == "low":
            return self.base
        scale = min(1.0, 2048 / max(width, height))
        w, h = width * scale, height * scale
        scale = min(1.0, 768 / min(w, h))
        w, h = w * scale, h * scale
        return self.base + self.tile * _ceil(w / 512) * _ceil(h / 512)


def _ceil(x: float) -> int:
    """Ceiling that ignores float noise (1408.0000000002 / 32 counts as 44, not 45)."""
    return math.ceil(x - 1e-9)


def _patches(width: int, height: int, cap: int) -> int:
    """32-px patches covering the image, shrinking it (aspect kept) until at most `cap` fit:
    the guide's worked examples give 1024 x 1024 -> 1024 and 1800 x 2400 -> 1452."""
    raw = _ceil(width / 32) * _ceil(height / 32)
    if raw <= cap:
        return raw
    shrink = math.sqrt(32 * 32 * cap / (width * height))
    w_patches, h_patches = width * shrink / 32, height * shrink / 32
    shrink *= min(math.floor(w_patches) / w_patches, math.floor(h_patches) / h_patches)
    return min(cap, _ceil(width * shrink / 32) * _ceil(height * shrink / 32))


@dataclass(frozen=True)
class ModelFamily:
    """What one family of models accepts. `efforts` are the `reasoning_effort` values taken
    (empty: the parameter is unknown to the model); `sampling` says when temperature, top_p,
    penalties and logprobs may differ from their defaults; `images` None: no image input."""

    name: str
    reasoning: bool
    efforts: tuple[str, ...]
    default_effort: str | None
    sampling: Sampling
    max_output_tokens: int
    context_window: int
    images: ImageRule | None
    verbosity: bool
    source: str
    owned_by: str = "system"


_TILES_4O = ImageRule("tiles", base=85, tile=170)
_TILES_O = ImageRule("tiles", base=75, tile=150)
_TILES_5 = ImageRule("tiles", base=70, tile=140)
_PATCH = "patches"


@dataclass(frozen=True)
class _Line:
    """What a line of reasoning models shares: efforts, default effort, sampling, limits."""

    efforts: tuple[str, ...]
    default: str
    sampling: Sampling
    out: int
    context: int


_O = _Line(("low", "medium", "high"), "medium", "default_only", 100000, 200000)
_GPT5 = _Line(("minimal", "low", "medium", "high"), "medium", "default_only", 128000, 400000)
_GPT51 = _Line(("none", "low", "medium", "high"), "none", "only_without_reasoning", 128000, 400000)
_GPT52 = _Line(("none", *_GPT51.efforts[1:], "xhigh"), "none", _GPT51.sampling, 128000, 400000)
_O_SOURCE = "[spec] [reasoning] [vision] [limits]"
_GPT5_SOURCE = "[spec] [reasoning] [effort] [vision] [limits]"


def _chat(name: str, images: ImageRule, out: int, context: int, source: str) -> ModelFamily:
    return ModelFamily(name, False, (), None, "free", out, context, images, False, source)


def _reasoner(name: str, line: _Line, images: ImageRule | None, source: str) -> ModelFamily:
    gpt5 = name.startswith("gpt-5")
    return ModelFamily(
        name, True, line.efforts, line.default, line.sampling, line.out, line.context, images,
        gpt5, source,
    )  # fmt: skip


_DATE = r"(?:-\d{4}-\d{2}-\d{2})?"

# (pattern, family, the dated snapshot its alias (the family's name) answers as). Order
# matters: first match wins.
_TABLE: tuple[tuple[str, ModelFamily, str], ...] = (
    (
        rf"gpt-4o-mini{_DATE}",
        _chat("gpt-4o-mini", ImageRule("tiles", 2833, 5667), 16384, 128000, "[vision] [limits]"),
        "gpt-4o-mini-2024-07-18",
    ),
    (
        rf"(?:gpt-4o{_DATE}|chatgpt-4o-latest)",
        _chat("gpt-4o", _TILES_4O, 16384, 128000, "[vision] [limits]"),
        "gpt-4o-2024-08-06",
    ),
    (
        rf"gpt-4\.1-mini{_DATE}",
        _chat("gpt-4.1-mini", ImageRule(_PATCH, multiplier=1.62), 32768, 1047576, "[vision]"),
        "gpt-4.1-mini-2025-04-14",
    ),
    (
        rf"gpt-4\.1-nano{_DATE}",
        _chat("gpt-4.1-nano", ImageRule(_PATCH, multiplier=2.46), 32768, 1047576, "[vision]"),
        "gpt-4.1-nano-2025-04-14",
    ),
    (
        rf"gpt-4\.1{_DATE}",
        _chat("gpt-4.1", _TILES_4O, 32768, 1047576, "[vision] [limits]"),
        "gpt-4.1-2025-04-14",
    ),
    (rf"o1{_DATE}", _reasoner("o1", _O, _TILES_O, _O_SOURCE), "o1-2024-12-17"),
    (
        rf"o3-mini{_DATE}",
        _reasoner("o3-mini", _O, None, "[spec] [reasoning] [limits] (no image input)"),
        "o3-mini-2025-01-31",
    ),
    (rf"o3{_DATE}", _reasoner("o3", _O, _TILES_O, _O_SOURCE), "o3-2025-04-16"),
    (
        rf"o4-mini{_DATE}",
        _reasoner("o4-mini", _O, ImageRule(_PATCH, multiplier=1.72), _O_SOURCE),
        "o4-mini-2025-04-16",
    ),
    (
        rf"gpt-5-mini{_DATE}",
        _reasoner("gpt-5-mini", _GPT5, ImageRule(_PATCH, multiplier=1.62), _GPT5_SOURCE),
        "gpt-5-mini-2025-08-07",
    ),
    (
        rf"gpt-5-nano{_DATE}",
        _reasoner("gpt-5-nano", _GPT5, ImageRule(_PATCH, multiplier=2.46), _GPT5_SOURCE),
        "gpt-5-nano-2025-08-07",
    ),
    (rf"gpt-5{_DATE}", _reasoner("gpt-5", _GPT5, _TILES_5, _GPT5_SOURCE), "gpt-5-2025-08-07"),
    (
        rf"gpt-5\.1{_DATE}",
        _reasoner(
            "gpt-5.1",
            _GPT51,
            _TILES_5,
            "[spec] [latest-model] [effort] [limits]; images assumed as gpt-5",
        ),
        "gpt-5.1-2025-11-13",
    ),
    (
        rf"gpt-5\.2{_DATE}",
        _reasoner(
            "gpt-5.2",
            _GPT52,
            _TILES_5,
            "[spec] [latest-model] [limits]; default effort and images assumed as gpt-5.1",
        ),
        "gpt-5.2-2025-12-11",
    ),
)

_COMPILED = tuple((re.compile(rf"\A{p}\Z"), f, s) for p, f, s in _TABLE)
# ft:BASE:ORG:SUFFIX:ID, the suffix possibly empty, a checkpoint with :ckpt-step-N after it
_FINE_TUNED = re.compile(r"\Aft:(?P<base>[^:]+):[^:]+:[^:]*:[^:]+(?::ckpt-step-\d+)?\Z")
FAMILIES: tuple[ModelFamily, ...] = tuple(f for _, f, _ in _TABLE)

CUSTOM = ModelFamily(
    name="custom",
    reasoning=False,
    efforts=(),
    default_effort=None,
    sampling="free",
    max_output_tokens=16384,
    context_window=128000,
    images=_TILES_4O,
    verbosity=False,
    source="the stand-in's own served names (e.g. simulated-critic): treated as a gpt-4o-like "
    "non-reasoning chat model",
    owned_by="lvlmva-simulation",
)


def family_for(model: str, custom: Mapping[str, ModelFamily]) -> tuple[ModelFamily, str] | None:
    """The family serving `model` and the model name the answer carries (an alias resolves to
    its dated snapshot, as the API does: `gpt-4o` answers as `gpt-4o-2024-08-06`); None for a
    name the stand-in does not serve. `custom` maps extra served names to their family. A
    fine-tuned name (see [fine-tuned]) is served by its base's family and answers as itself;
    one whose base is not served is not served either."""
    if model in custom:
        return custom[model], model
    tuned = _FINE_TUNED.match(model)
    base = tuned.group("base") if tuned else model
    for pattern, family, snapshot in _COMPILED:
        if pattern.match(base):
            return family, snapshot if model == family.name else model
    return None


def openai_model_ids() -> list[str]:
    """The OpenAI model aliases the stand-in serves (for `GET /v1/models`)."""
    return [family.name for family in FAMILIES]
