"""The Batch API of the OpenAI stand-in: create, retrieve, list, cancel, and the lifecycle that
runs each batch on the stand-in's clock.

Sources:

- [spec] openai/openai-openapi@f85dbe2: `CreateBatchRequest` (input_file_id, endpoint in
  /v1/responses, /v1/chat/completions, /v1/embeddings, /v1/completions, /v1/moderations,
  /v1/images/generations, /v1/images/edits, /v1/videos; completion_window only "24h"; metadata;
  output_expires_after), "up to 50,000 requests, and can be up to 200 MB"; `Batch` (statuses
  validating, failed, in_progress, finalizing, completed, expired, cancelling, cancelled; the
  *_at timestamps; request_counts {total, completed, failed}; errors {object, data[BatchError
  {code, message, param, line}]}; usage {input_tokens, input_tokens_details.cached_tokens,
  output_tokens, output_tokens_details.reasoning_tokens, total_tokens}); `ListBatchesResponse`
  with `after` and `limit` 1..100 (default 20); cancel: "cancelling for up to 10 minutes, before
  changing to cancelled, where it will have partial results (if any) available in the output
  file".
- [lines] the 2025-03-21 branch of the same repository: `BatchRequestInput` {custom_id "unique
  for each request in a batch", method "POST" only, url, body} and `BatchRequestOutput` {id,
  custom_id, response {status_code, request_id, body} | null, error {code, message} | null}. A
  request the endpoint rejects is an error-file line whose response has the 4xx status and the
  same error body a synchronous call gets (artefactory/artefactual#332).
- [validation] content errors do not fail `create`: the batch is created `validating` and then
  `failed` with errors.data entries with codes such as invalid_json_line ("This line is not
  parseable as valid JSON."), duplicate_custom_id, url_mismatch, model_mismatch (one model per
  file), empty_file, too_many_tasks (stdapi-ai/stdapi.ai#240, llm-d/llm-d-batch-gateway#147,
  567-labs/instructor#1120 "missing required 'method'"); an enqueued-token limit fails it with
  token_limit_exceeded. The limit counts prompt tokens only: "Enqueued prompt tokens per model
  ... There are no limits for output tokens" (the Batch guide's rate-limit section), summed
  over the model's batches that are validating, in progress or finalizing.
- [expiry] unfinished work when the 24-h window closes: the batch ends `expired`, finished lines
  keep their output, unfinished ones are error-file lines with code `batch_expired`
  (the Batch guide; BerriAI/litellm-docs#1571 restates it).

Output and error files list lines in processing order, which the stand-in shuffles (seeded), so
a client that assumes input order fails here as it would against the API. Lines that never ran
before a cancel are in neither file; lines that never ran before expiry are `batch_expired`
lines. Expired and cancelled lines are not counted in `request_counts.failed`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lvlmva.errors import ConfigError
from lvlmva.simulation.batch_lines import BatchLine, batch_error, json_lines, parse_batch_lines
from lvlmva.simulation.clock import Clock
from lvlmva.simulation.openai_chat import ChatEngine
from lvlmva.simulation.openai_errors import (
    APIError,
    invalid_request,
    invalid_value,
    missing_required,
    not_found,
    unknown_parameters,
)
from lvlmva.simulation.openai_files import FileStore, list_limit, page
from lvlmva.simulation.openai_ledger import BatchLineRecord, Ledger, body_sha256
from lvlmva.simulation.openai_ratelimit import ORGANIZATION
from lvlmva.simulation.openai_usage import random_id

__all__ = ["BatchRunner", "BatchTiming"]

ENDPOINTS = (
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
)  # fmt: skip
SERVED_ENDPOINT = "/v1/chat/completions"
ACTIVE = ("validating", "in_progress", "finalizing")
_CREATE_KEYS = {"input_file_id", "endpoint", "completion_window", "metadata",
                "output_expires_after"}  # fmt: skip


@dataclass(frozen=True)
class BatchTiming:
    """How batches move on the clock: seconds in `validating`, lines run per second once
    `in_progress` (None: all at once), seconds in `finalizing` and in `cancelling`, the
    completion window, the line limit, and an enqueued-token limit per model (None: none)."""

    validation_s: float = 0.0
    lines_per_s: float | None = None
    finalizing_s: float = 0.0
    cancel_s: float = 0.0
    window_s: float = 24 * 3600.0
    max_lines: int = 50_000
    queue_tokens: int | None = None

    def __post_init__(self) -> None:
        if min(self.validation_s, self.finalizing_s, self.cancel_s) < 0 or self.window_s <= 0:
            raise ConfigError("batch timings must not be negative (and the window positive)")
        if self.validation_s >= self.window_s:
            raise ConfigError("validation_s must be shorter than the completion window")
        if self.lines_per_s is not None and self.lines_per_s <= 0:
            raise ConfigError(f"lines_per_s must be positive or None, got {self.lines_per_s}")


@dataclass
class _Batch:
    """A batch's mutable state; `to_dict` is the API's `batch` object."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    output_expiry_s: int | None
    content: bytes
    created_at: float
    expires_at: float
    status: str = "validating"
    model: str | None = None
    times: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    lines: list[BatchLine] = field(default_factory=list)
    processed: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("input", "cached", "output", "reasoning"), 0))  # fmt: skip
    queued_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        stamp = {k: int(v) for k, v in self.times.items()}
        u = self.usage
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": stamp.get("in_progress"),
            "expires_at": int(self.expires_at),
            "finalizing_at": stamp.get("finalizing"),
            "completed_at": stamp.get("completed"),
            "failed_at": stamp.get("failed"),
            "expired_at": stamp.get("expired"),
            "cancelling_at": stamp.get("cancelling"),
            "cancelled_at": stamp.get("cancelled"),
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": u["input"],
                "input_tokens_details": {"cached_tokens": u["cached"]},
                "output_tokens": u["output"],
                "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
                "total_tokens": u["input"] + u["output"],
            },
            "metadata": self.metadata,
        }


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if (
        not isinstance(metadata, Mapping)
        or len(metadata) > 16
        or any(not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items())
    ):
        raise invalid_value(
            "metadata",
            "Invalid 'metadata': at most 16 pairs, keys up to 64 and string values up to 512 "
            "characters.",
        )
    return dict(metadata)


def _output_expiry(spec: Any) -> int | None:
    if spec is None:
        return None
    seconds = spec.get("seconds") if isinstance(spec, Mapping) else None
    if (
        not isinstance(spec, Mapping)
        or spec.get("anchor") != "created_at"
        or not (isinstance(seconds, int) and 3600 <= seconds <= 2_592_000)
    ):
        raise invalid_value(
            "output_expires_after",
            "Invalid 'output_expires_after': expected {'anchor': 'created_at', 'seconds': "
            "3600..2592000}.",
        )
    return seconds


class BatchRunner:
    """Batches by id, advanced to the clock's time whenever one is read (`tick`)."""

    def __init__(
        self,
        files: FileStore,
        engine: ChatEngine,
        clock: Clock,
        ledger: Ledger,
        timing: BatchTiming,
        *,
        seed: int = 0,
    ) -> None:
        self.files, self.engine, self.clock, self.ledger = files, engine, clock, ledger
        self.timing = timing
        self.seed = seed
        self._ids = random.Random(f"standin-batches:{seed}")
        self._batches: dict[str, _Batch] = {}

    # -- the routes ---------------------------------------------------------------------------

    def create(self, body: Any) -> dict[str, Any]:
        """`POST /v1/batches`: the checks made at once; the file's lines wait for validation."""
        if not isinstance(body, Mapping):
            raise invalid_request("The request body must be a JSON object.")
        unknown = set(body) - _CREATE_KEYS
        if unknown:
            raise unknown_parameters(unknown)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise missing_required(name)
        endpoint, window = body["endpoint"], body["completion_window"]
        if endpoint not in ENDPOINTS:
            supported = ", ".join(f"'{e}'" for e in ENDPOINTS)
            raise invalid_value(
                "endpoint", f"Invalid value: {endpoint!r}. Supported values are: {supported}."
            )
        if endpoint != SERVED_ENDPOINT:
            raise invalid_request(
                f"The OpenAI stand-in serves batches for {SERVED_ENDPOINT} only.",
                "endpoint",
                "not_served_by_stand_in",
            )
        if window != "24h":
            raise invalid_value(
                "completion_window", f"Invalid value: {window!r}. Supported values are: '24h'."
            )
        metadata = _check_metadata(body.get("metadata"))
        expiry = _output_expiry(body.get("output_expires_after"))
        meta = self.files.get(body["input_file_id"])
        if meta.purpose != "batch":
            raise invalid_value(
                "input_file_id",
                f"The input file {meta.id} has purpose '{meta.purpose}'; a batch needs a file "
                "uploaded with purpose 'batch'.",
            )
        now = self.clock.now()
        batch = _Batch(
            id=random_id("batch_", self._ids, 32),
            endpoint=endpoint,
            input_file_id=meta.id,
            metadata=metadata,
            output_expiry_s=expiry,
            content=self.files.content(meta.id),
            created_at=now,
            expires_at=now + self.timing.window_s,
        )
        self._batches[batch.id] = batch
        self._record_lines(batch)
        return batch.to_dict()

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._get(batch_id).to_dict()

    def list(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /v1/batches`: newest first, `after` a batch id, `limit` 1..100 (default 20)."""
        self.tick()
        batches = sorted(self._batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)
        return page(batches, query.get("after"), list_limit(query.get("limit"), 20, 100))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self._get(batch_id)
        if batch.status in ACTIVE:
            batch.status = "cancelling"
            batch.times["cancelling"] = self.clock.now()
            self._advance(batch, self.clock.now())
        elif batch.status not in ("cancelling", "cancelled"):
            raise invalid_request(f"Cannot cancel a batch with status '{batch.status}'.")
        return batch.to_dict()

    def tick(self) -> None:
        """Advance every batch to the clock's time."""
        now = self.clock.now()
        for batch in list(self._batches.values()):
            self._advance(batch, now)

    def _get(self, batch_id: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise not_found("Batch", batch_id, "batch_id")
        self._advance(batch, self.clock.now())
        return batch

    def _record_lines(self, batch: _Batch) -> None:
        """Every submitted line goes to the ledger (body hash, or raw-line hash if not JSON)."""
        for number, raw, obj in json_lines(batch.content):
            custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
            body = obj.get("body") if isinstance(obj, dict) else None
            sha = body_sha256(body) if body is not None else hashlib.sha256(raw).hexdigest()
            self.ledger.batch_lines.append(
                BatchLineRecord(
                    batch.id,
                    batch.input_file_id,
                    number,
                    custom_id if isinstance(custom_id, str) else None,
                    sha,
                )
            )

    # -- validation ---------------------------------------------------------------------------

    def _model_problems(self, batch: _Batch, lines: list[BatchLine]) -> list[dict[str, Any]]:
        models = [(line.number, line.body.get("model")) for line in lines]
        if not models:
            return []
        first = models[0][1]
        errors = [
            batch_error(
                "model_mismatch",
                f"The model of this request ({model!r}) differs from the file's first model "
                f"({first!r}); a batch input file takes one model.",
                number,
                "body.model",
            )
            for number, model in models
            if model != first
        ]
        if errors:
            return errors
        try:
            self.engine.resolve(first)
        except APIError as exc:
            return [batch_error(exc.code or "invalid_model", exc.message, None, "body.model")]
        batch.model = first
        return self._queue_problem(batch, lines)

    def _queue_problem(self, batch: _Batch, lines: list[BatchLine]) -> list[dict[str, Any]]:
        tokens = 0
        for line in lines:
            try:
                params = self.engine.check(line.body)
            except APIError:
                continue
            tokens += params.parsed.prompt_tokens
        batch.queued_tokens = tokens
        limit = self.timing.queue_tokens
        queued = sum(
            b.queued_tokens
            for b in self._batches.values()
            if b is not batch and b.model == batch.model and b.status in ACTIVE
        )
        if limit is not None and queued + tokens > limit:
            return [batch_error(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {batch.model} in organization {ORGANIZATION}. "
                f"Limit: {limit} enqueued tokens. Please try again once some in_progress batches "
                "have been completed.",
            )]  # fmt: skip
        return []

    def _validate(self, batch: _Batch, at: float) -> None:
        lines, errors = parse_batch_lines(batch.content, batch.endpoint, self.timing.max_lines)
        if not errors:
            errors = self._model_problems(batch, lines)
        if errors:
            batch.errors = errors
            batch.status = "failed"
            batch.times["failed"] = at
            return
        order = list(range(len(lines)))
        random.Random(f"{self.seed}:{batch.id}").shuffle(order)
        batch.lines = [lines[i] for i in order]
        batch.status = "in_progress"
        batch.times["in_progress"] = at

    # -- running ------------------------------------------------------------------------------

    def _line_time(self, batch: _Batch, k: int) -> float:
        """When the `k`-th line (1-based, processing order) finishes."""
        rate = self.timing.lines_per_s
        start = batch.times["in_progress"]
        return start if rate is None else start + k / rate

    def _run_until(self, batch: _Batch, until: float) -> None:
        while batch.processed < len(batch.lines):
            if self._line_time(batch, batch.processed + 1) > until:
                return
            self._run_line(batch, batch.lines[batch.processed])
            batch.processed += 1

    def _run_line(self, batch: _Batch, line: BatchLine) -> None:
        outcome = self.engine.run(
            line.body, channel="batch", batch_id=batch.id, custom_id=line.custom_id
        )
        entry = {
            "id": random_id("batch_req_", self._ids, 32),
            "custom_id": line.custom_id,
            "response": {
                "status_code": outcome.status,
                "request_id": "req_" + random_id("", self._ids, 32).lower(),
                "body": outcome.body,
            },
            "error": None,
        }
        if outcome.status == 200:
            batch.results.append(entry)
            batch.completed += 1
            record = outcome.record
            for key, value in (
                ("input", record.prompt_tokens),
                ("cached", record.cached_tokens),
                ("output", record.completion_tokens),
                ("reasoning", record.reasoning_tokens),
            ):
                batch.usage[key] += value
        else:
            batch.failures.append(entry)
            batch.failed += 1

    def _advance(self, batch: _Batch, now: float) -> None:
        """Move `batch` through its lifecycle up to `now`."""
        timing = self.timing
        while True:
            status = batch.status
            if status == "validating":
                at = batch.created_at + timing.validation_s
                if now < at:
                    return
                self._validate(batch, at)
            elif status == "in_progress":
                self._run_until(batch, min(now, batch.expires_at))
                if batch.processed == len(batch.lines):
                    batch.status = "finalizing"
                    batch.times["finalizing"] = self._line_time(batch, len(batch.lines))
                elif now >= batch.expires_at:
                    self._finish(batch, "expired", batch.expires_at)
                    return
                else:
                    return
            elif status in ("finalizing", "cancelling"):
                start = batch.times[status]
                at = start + (timing.finalizing_s if status == "finalizing" else timing.cancel_s)
                if now < at:
                    return
                self._finish(batch, "completed" if status == "finalizing" else "cancelled", at)
                return
            else:
                return

    def _finish(self, batch: _Batch, status: str, at: float) -> None:
        if status == "expired":
            for line in batch.lines[batch.processed :]:
                batch.failures.append({
                    "id": random_id("batch_req_", self._ids, 32),
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion "
                        "window expired.",
                    },
                })  # fmt: skip
        batch.status = status
        batch.times[status] = at
        expiry = int(at) + batch.output_expiry_s if batch.output_expiry_s else None
        for kind, entries in (("output", batch.results), ("error", batch.failures)):
            if entries:
                content = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
                meta = self.files.store(
                    f"{batch.id}_{kind}.jsonl", "batch_output", content.encode(), expiry, at
                )
                setattr(batch, f"{kind}_file_id", meta.id)
