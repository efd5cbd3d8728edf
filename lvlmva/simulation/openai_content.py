"""`messages` of a chat-completions request: shapes checked against the spec, token-counted, and
turned into the provider-neutral `Message`s an answerer reads.

Sources:

- [spec] openai/openai-openapi@f85dbe2 `ChatCompletionRequestMessage` and its parts: roles
  developer, system, user, assistant, tool, function; developer/system/tool content is a string
  or a non-empty list of `text` parts; user parts are `text`, `image_url`, `input_audio`,
  `file`; assistant content may be null when `tool_calls` or `function_call` is given; an
  `image_url` part has `image_url.url` (a URL or a base64 data URL) and `detail` in auto, low,
  high (default auto).
- [extra] unknown keys in a message or part are refused: "Additional properties are not allowed
  ('x' was unexpected)", the API's answer to e.g. Anthropic's `cache_control` in a part.
- [images] the vision guide: png, jpeg, gif (non-animated) and webp; at most 500 images and
  50 MB of image data per request.
- [tokens] without OpenAI's tokenizer here, text counts as ceil(characters / 4) (OpenAI's rule of
  thumb); each message adds 3 tokens and the reply is primed with 3 (openai-cookbook, "How to
  count tokens with tiktoken"). Image tokens follow the model family (`openai_models`).

The stand-in cannot fetch image URLs (it has no network): an http(s) image URL is refused with a
message saying so, where the API would download it. Audio and file parts are refused the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from lvlmva.engine.types import ImagePart, Message, Part, TextPart
from lvlmva.simulation.openai_errors import (
    invalid_request,
    invalid_type,
    invalid_value,
    missing_required,
)
from lvlmva.simulation.openai_models import ModelFamily

__all__ = ["ParsedMessages", "Segment", "parse_messages", "text_tokens"]

_DATA_URL = re.compile(r"\Adata:(?P<mime>image/[\w.+-]+);base64,(?P<data>.*)\Z", re.S)
_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}
_KEYS = {
    "developer": {"role", "content", "name"},
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "refusal", "audio", "tool_calls", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
    "function": {"role", "content", "name"},
}
_PART_KEYS = {
    "text": {"type", "text", "prompt_cache_breakpoint"},
    "image_url": {"type", "image_url", "prompt_cache_breakpoint"},
    "refusal": {"type", "refusal"},
}
MESSAGE_OVERHEAD, REPLY_PRIMING = 3, 3
MAX_IMAGES, MAX_IMAGE_BYTES = 500, 50 * 1024 * 1024


def text_tokens(text: str) -> int:
    """Estimated tokens of `text`: ceil(characters / 4)."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Segment:
    """One piece of the prompt in order, for token counts and the prefix cache: `key` is what
    identifies it (role marker, text or image digest), `tokens` what it costs."""

    kind: str
    key: str
    tokens: int


@dataclass(frozen=True)
class ParsedMessages:
    """Checked messages: for the answerer (`messages`), for accounting (`segments`), all text
    (`text`, for the json_object rule) and the image count."""

    messages: tuple[Message, ...]
    segments: tuple[Segment, ...]
    text: str
    images: int

    @property
    def prompt_tokens(self) -> int:
        return sum(s.tokens for s in self.segments) + REPLY_PRIMING

    @property
    def image_tokens(self) -> int:
        return sum(s.tokens for s in self.segments if s.kind == "image")


class _Builder:
    def __init__(self, family: ModelFamily) -> None:
        self.family = family
        self.segments: list[Segment] = []
        self.texts: list[str] = []
        self.messages: list[Message] = []
        self.images = 0
        self.image_bytes = 0

    def text(self, text: str) -> TextPart:
        self.segments.append(Segment("text", text, text_tokens(text)))
        self.texts.append(text)
        return TextPart(text)

    def image(self, spec: Any, where: str) -> ImagePart:
        if self.family.images is None:
            raise invalid_request(
                "Invalid content type. image_url is only supported by certain models.",
                f"{where}.type",
                "invalid_value",
            )
        if not isinstance(spec, Mapping):
            raise invalid_type(f"{where}.image_url", "an object", spec)
        _no_extra(spec, {"url", "detail"}, f"{where}.image_url")
        url, detail = spec.get("url"), spec.get("detail", "auto")
        if url is None:
            raise missing_required(f"{where}.image_url.url")
        if not isinstance(url, str):
            raise invalid_type(f"{where}.image_url.url", "a string", url)
        if detail not in ("auto", "low", "high"):
            raise invalid_value(
                f"{where}.image_url.detail",
                f"Invalid value: {detail!r}. Supported values are: 'auto', 'low', and 'high'.",
            )
        data, width, height = _decode_image(url, where)
        self.images += 1
        self.image_bytes += len(data)
        if self.images > MAX_IMAGES or self.image_bytes > MAX_IMAGE_BYTES:
            raise invalid_request(
                f"Too many images: at most {MAX_IMAGES} images and 50 MB of image data per "
                "request.",
                "messages",
            )
        digest = hashlib.sha256(data).hexdigest()
        tokens = self.family.images.tokens(width, height, detail)
        self.segments.append(Segment("image", f"{digest}:{detail}", tokens))
        return ImagePart(f"image{self.images}", data, _mime(url), width, height)


def _no_extra(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise invalid_request(
            f"Additional properties are not allowed ('{extra[0]}' was unexpected) - '{where}'"
        )


def _mime(url: str) -> str:
    match = _DATA_URL.match(url)
    return match.group("mime") if match else "image/png"


def _decode_image(url: str, where: str) -> tuple[bytes, int, int]:
    if url.startswith(("http://", "https://")):
        raise invalid_request(
            "The OpenAI stand-in cannot fetch image URLs (it has no network access); send the "
            "image as a base64 data: URL.",
            f"{where}.image_url.url",
            "image_url_not_fetched",
        )
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid_value(
            f"{where}.image_url.url",
            "Invalid image URL: expected a URL or a base64 data URL (data:image/...;base64,...).",
        )
    try:
        data = base64.b64decode(match.group("data"), validate=True)
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
    except (binascii.Error, ValueError, OSError):
        fmt = None
    if fmt not in _FORMATS:
        raise invalid_request(
            "You uploaded an unsupported image. Please make sure your image is one of the "
            "following formats: png, jpeg, gif, webp.",
            f"{where}.image_url.url",
            "invalid_image_format",
        )
    return data, width, height


def _parts(builder: _Builder, content: Any, role: str, where: str) -> tuple[Part, ...]:
    """The content of one message as parts (a string is one text part)."""
    if isinstance(content, str):
        return (builder.text(content),)
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array", content)
    if not content:
        raise invalid_value(
            f"{where}.content",
            f"Invalid '{where}.content': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "empty_array",
        )
    allowed = {"user": ("text", "image_url"), "assistant": ("text", "refusal")}.get(role, ("text",))
    out: list[Part] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_audio", "file") and role == "user":
            raise invalid_request(
                f"The OpenAI stand-in does not serve '{kind}' content parts.", f"{at}.type"
            )
        if kind not in allowed:
            raise invalid_value(
                f"{at}.type",
                f"Invalid value: {kind!r}. Supported values are: "
                + ", ".join(f"'{k}'" for k in allowed)
                + ".",
            )
        _no_extra(part, _PART_KEYS[kind], at)
        if kind == "image_url":
            out.append(builder.image(part.get("image_url"), at))
        else:
            text = part.get(kind)
            if not isinstance(text, str):
                raise invalid_type(f"{at}.{kind}", "a string", text)
            out.append(builder.text(text))
    return tuple(out)


def _message(builder: _Builder, raw: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(raw, Mapping):
        raise invalid_type(where, "an object", raw)
    role = raw.get("role")
    if role not in _KEYS:
        raise invalid_value(
            f"{where}.role",
            f"Invalid value: {role!r}. Supported values are: 'developer', 'system', 'user', "
            "'assistant', 'tool', and 'function'.",
        )
    _no_extra(raw, _KEYS[role], where)
    if role == "tool" and not isinstance(raw.get("tool_call_id"), str):
        raise missing_required(f"{where}.tool_call_id")
    builder.segments.append(Segment("role", f"{role}:{raw.get('name', '')}", MESSAGE_OVERHEAD))
    content = raw.get("content")
    if content is None:
        if role == "assistant" and (raw.get("tool_calls") or raw.get("function_call")):
            return
        if role != "function":
            raise missing_required(f"{where}.content")
        return
    parts = _parts(builder, content, role, where)
    if role in ("developer", "system", "user", "assistant"):
        mapped = "system" if role == "developer" else role
        builder.messages.append(Message(mapped, parts))  # type: ignore[arg-type]


def parse_messages(raw: Any, family: ModelFamily) -> ParsedMessages:
    """Check `messages` for a model of `family` (APIError 400 if invalid) and count it."""
    if raw is None:
        raise missing_required("messages")
    if not isinstance(raw, list):
        raise invalid_type("messages", "an array", raw)
    if not raw:
        raise invalid_value(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "empty_array",
        )
    builder = _Builder(family)
    for i, message in enumerate(raw):
        _message(builder, message, i)
    return ParsedMessages(
        tuple(builder.messages), tuple(builder.segments), "\n".join(builder.texts), builder.images
    )
