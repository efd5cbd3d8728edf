"""Files of the OpenAI stand-in: what `POST /v1/files` stores and `GET /v1/files/...` returns.

Sources:

- [spec] openai/openai-openapi@f85dbe2: `CreateFileRequest` (multipart `file` and `purpose` in
  assistants, batch, fine-tune, vision, user_data, evals; optional `expires_after` with anchor
  `created_at` and 3,600..2,592,000 seconds; "files with purpose=batch expire after 30 days"),
  `OpenAIFile` (id, object "file", bytes, created_at, expires_at, filename, purpose - which also
  takes batch_output for files the Batch API writes - status, status_details),
  `DeleteFileResponse` ({id, object "file", deleted}), the `/files` list (`purpose`, `limit`
  1..10,000, `order` asc|desc by created_at, default desc, `after`).
- [upload] "The Batch API only supports .jsonl files up to 200 MB in size" (the spec's
  createFile description); a non-.jsonl batch upload is refused at once ("Invalid file format
  for Batch API. Must be .jsonl", as observed in BerriAI/litellm#37527). A .jsonl file with
  malformed lines is accepted on upload (observed in the same report): the API checks the lines
  when a batch validates its input, and so does the stand-in (`batch_api`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lvlmva.simulation.clock import Clock
from lvlmva.simulation.openai_errors import APIError, invalid_request, invalid_value, not_found
from lvlmva.simulation.openai_ledger import FileRecord, Ledger
from lvlmva.simulation.openai_usage import random_id

__all__ = ["UPLOAD_PURPOSES", "FileObject", "FileStore", "list_limit", "page"]

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_EXPIRY_S = 30 * 24 * 3600
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class FileObject:
    """The `file` object of the API."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    status: str = "processed"
    status_details: str | None = None
    object: str = "file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expiry(expires_after: Mapping[str, Any] | None, created: int, purpose: str) -> int | None:
    if not expires_after:
        return created + BATCH_FILE_EXPIRY_S if purpose == "batch" else None
    anchor, seconds = expires_after.get("anchor"), expires_after.get("seconds")
    if anchor != "created_at":
        raise invalid_value(
            "expires_after.anchor",
            f"Invalid value: {anchor!r}. Supported values are: 'created_at'.",
        )
    try:
        seconds = int(seconds)  # multipart form fields arrive as text
    except (TypeError, ValueError):
        seconds = -1
    if not 3600 <= seconds <= 2_592_000:
        raise invalid_value(
            "expires_after.seconds",
            "Invalid 'expires_after.seconds': expected an integer between 3600 and 2592000.",
        )
    return created + seconds


class FileStore:
    """Files by id, with their bytes; the batch runner writes its output files here too."""

    def __init__(self, clock: Clock, ledger: Ledger, *, seed: int = 0) -> None:
        self.clock = clock
        self.ledger = ledger
        self._ids = random.Random(f"standin-files:{seed}")
        self._files: dict[str, tuple[FileObject, bytes]] = {}

    def upload(
        self,
        filename: str,
        purpose: Any,
        content: bytes,
        expires_after: Mapping[str, Any] | None = None,
    ) -> FileObject:
        """`POST /v1/files`: check what the API checks on upload, then store."""
        if purpose not in UPLOAD_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            raise invalid_value(
                "purpose", f"Invalid value: {purpose!r}. Supported values are: {allowed}."
            )
        if len(content) > MAX_FILE_BYTES:
            raise invalid_request("File is too large: files can be at most 512 MB.", "file")
        if purpose == "batch":
            if not filename.lower().endswith(".jsonl"):
                raise invalid_request("Invalid file format for Batch API. Must be .jsonl", "file")
            if len(content) > MAX_BATCH_FILE_BYTES:
                raise invalid_request(
                    "File is too large: Batch API input files can be at most 200 MB.", "file"
                )
        created = int(self.clock.now())
        return self.store(filename, purpose, content, _expiry(expires_after, created, purpose))

    def store(
        self,
        filename: str,
        purpose: str,
        content: bytes,
        expires_at: int | None = None,
        created_at: float | None = None,
    ) -> FileObject:
        """Store `content` without checks (the stand-in's own output files)."""
        created = int(self.clock.now() if created_at is None else created_at)
        meta = FileObject(
            random_id("file-", self._ids, 22), len(content), created, filename, purpose, expires_at
        )
        self._files[meta.id] = (meta, bytes(content))
        self.ledger.files.append(
            FileRecord(
                meta.id,
                purpose,
                filename,
                len(content),
                hashlib.sha256(content).hexdigest(),
                content.count(b"\n") + (0 if content.endswith(b"\n") or not content else 1),
                self.clock.now(),
            )
        )
        return meta

    def _live(self, file_id: str) -> tuple[FileObject, bytes]:
        found = self._files.get(file_id)
        expires = found[0].expires_at if found else None
        if found is None or (expires is not None and self.clock.now() >= expires):
            raise not_found("File", file_id, "file_id")
        return found

    def get(self, file_id: str) -> FileObject:
        return self._live(file_id)[0]

    def content(self, file_id: str) -> bytes:
        return self._live(file_id)[1]

    def delete(self, file_id: str) -> dict[str, Any]:
        self._live(file_id)
        del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def list(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /v1/files` with `purpose`, `limit`, `order` and `after`."""
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid_value("order", f"Invalid value: '{order}'. Supported values are: "
                                "'asc' and 'desc'.")  # fmt: skip
        limit = list_limit(query.get("limit"), 10_000, 10_000)
        files = [m for m, _ in self._files.values() if self.clock.now() < (m.expires_at or 1e300)]
        files = [m for m in files if query.get("purpose") in (None, m.purpose)]
        files.sort(key=lambda m: (m.created_at, m.id), reverse=order == "desc")
        return page(files, query.get("after"), limit)


def list_limit(text: str | None, default: int, most: int) -> int:
    """`limit` of a list query (APIError 400 outside 1..`most`)."""
    try:
        value = default if text is None else int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise invalid_value("limit", f"Invalid 'limit': expected an integer from 1 to {most}.")
    return value


def page(items: list[Any], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page (`object` list, `data`, `first_id`, `last_id`, `has_more`) of objects with
    an `id` and `to_dict()`, starting after the object with id `after`."""
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise APIError(400, f"Invalid 'after': no object with id {after!r} in this list.",
                           "invalid_request_error", "after")  # fmt: skip
        items = items[ids.index(after) + 1 :]
    chosen = items[:limit]
    return {
        "object": "list",
        "data": [item.to_dict() for item in chosen],
        "first_id": chosen[0].id if chosen else None,
        "last_id": chosen[-1].id if chosen else None,
        "has_more": len(items) > limit,
    }
