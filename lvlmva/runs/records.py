"""The typed values that cross the run store's boundary: the manifest, one sample's record,
its arrays going in, and what a reviewed sample, an audit entry and a summary look like."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from lvlmva.errors import DataError

STORE_VERSION = 1
"""Version of the on-disk layout; `CritiqueRun.open` refuses a run written by a newer one."""

STATUSES = ("ok", "failed", "not_run")
IMAGE_NAMES = ("original", "clusters", "overlay")
ARRAY_NAMES = ("labels", "responsibilities", "attribution", "mask")

_SECRET = re.compile(r"(api[_-]?key|secret|token|password|passwd|authorization|credential)", re.I)


class MissingSample(DataError):
    """The sample index asked for is not stored in the run."""


def public_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` without the entries whose name looks like a secret (api_key, token ...),
    with values made JSON-plain (paths and other objects become strings)."""
    return {
        str(k): v if isinstance(v, str | int | float | bool | type(None)) else str(v)
        for k, v in settings.items()
        if not _SECRET.search(str(k))
    }


@dataclass(frozen=True)
class RunManifest:
    """What a run was made from; written once at `create`, later only extended (`extra`).

    `critic` holds the critic settings; entries that name secrets are dropped on creation.
    `masks` is the mask rule of the run ("soft" or "hard"), used for the effective masks.
    `run_id`, `created` and `store_version` are filled in by `CritiqueRun.create`.
    """

    dataset: str
    split: str
    class_names: tuple[str, ...]
    masks: Literal["soft", "hard"] = "soft"
    checkpoint_sha256: str | None = None
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    spec_version: str | None = None
    prompt_version: str | None = None
    critic: Mapping[str, Any] = field(default_factory=dict)
    library_version: str = ""
    run_id: str = ""
    created: str = ""
    store_version: int = STORE_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.masks not in ("soft", "hard"):
            raise DataError(f"manifest masks must be 'soft' or 'hard', got {self.masks!r}")
        if not self.class_names:
            raise DataError("the manifest needs the dataset's class names")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "critic", public_settings(self.critic))
        object.__setattr__(self, "dataset_options", dict(self.dataset_options))
        object.__setattr__(self, "extra", dict(self.extra))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> RunManifest:
        try:
            data = json.loads(text)
            data["class_names"] = tuple(data["class_names"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{where} is not a valid run manifest ({exc})") from None


def _check_colour_map(name: str, values: Mapping[str, Any] | None, colors: tuple[str, ...]):
    if values is None:
        return None
    if set(values) != set(colors):
        raise DataError(f"{name} must name exactly the colours {list(colors)}, got {list(values)}")
    return dict(values)


@dataclass(frozen=True)
class RunRecord:
    """One critiqued sample, as the pipeline hands it over (the reviewer's changes live apart).

    `index` is the position in `split`; `verdicts` maps each colour to True ("yes", relevant)
    or False ("no", spurious); `agreement` how sure the critic was, per colour, where it was
    graded: the share of Critic votes that agreed when several voted, or the probability of
    the verdict's tokens when the critic gave log-probabilities (`--verdict-logprobs`).
    `spurious_colors`, when the dataset has ground-truth masks, names the colours whose
    cluster overlaps a spurious region (None: unknown).
    """

    index: int
    split: str
    label: int
    class_name: str
    status: str
    colors: tuple[str, ...] = ()
    cluster_ids: tuple[int, ...] = ()
    prediction: int | None = None
    confidence: float | None = None
    critique: str | None = None
    verdicts: dict[str, bool] | None = None
    agreement: dict[str, float] | None = None
    provider_calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    spurious_colors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = f"sample {self.index}"
        if self.status not in STATUSES:
            raise DataError(f"{where}: status must be one of {STATUSES}, got {self.status!r}")
        if int(self.index) < 0:
            raise DataError(f"{where}: the index must be >= 0")
        colors = tuple(str(c) for c in self.colors)
        if len(colors) != len(self.cluster_ids) or len(set(colors)) != len(colors):
            raise DataError(
                f"{where}: colours {list(colors)} must be distinct, one per cluster id "
                f"{list(self.cluster_ids)}"
            )
        if self.status == "ok" and self.verdicts is None:
            raise DataError(f"{where}: status 'ok' needs verdicts")
        verdicts = _check_colour_map(f"{where}: verdicts", self.verdicts, colors)
        agreement = _check_colour_map(f"{where}: agreement", self.agreement, colors)
        if agreement and not all(0.0 <= float(v) <= 1.0 for v in agreement.values()):
            raise DataError(f"{where}: agreement shares must lie in [0, 1], got {agreement}")
        if self.confidence is not None and not 0.0 <= float(self.confidence) <= 1.0:
            raise DataError(f"{where}: confidence must lie in [0, 1], got {self.confidence}")
        if self.spurious_colors is not None and not set(self.spurious_colors) <= set(colors):
            raise DataError(f"{where}: spurious colours {self.spurious_colors} are not all in "
                            f"{list(colors)}")
        set_ = object.__setattr__
        set_(self, "index", int(self.index))
        set_(self, "colors", colors)
        set_(self, "cluster_ids", tuple(int(k) for k in self.cluster_ids))
        set_(self, "verdicts", None if verdicts is None else {k: bool(v) for k, v in
                                                              verdicts.items()})
        set_(self, "agreement", None if agreement is None else {k: float(v) for k, v in
                                                                agreement.items()})
        if self.spurious_colors is not None:
            set_(self, "spurious_colors", tuple(str(c) for c in self.spurious_colors))


def _numpy(value: Any, name: str) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if not np.all(np.isfinite(array)):
        raise DataError(f"the {name} array holds NaN or infinite values")
    return array


@dataclass(frozen=True)
class SampleArrays:
    """The files of one sample going into the store (numpy arrays or torch tensors).

    `images` maps "original", "clusters", "overlay" to PNG bytes (the Critic's images);
    `labels` [H, W] holds cluster ids (-1 = background); `responsibilities` [J, H, W] the soft
    assignment (needed for soft masks); `attribution` [H, W]; `mask` [H, W] in [0, 1]
    (1 = spurious; None: the store computes it from the verdicts).
    """

    images: Mapping[str, bytes]
    labels: Any
    responsibilities: Any = None
    attribution: Any = None
    mask: Any = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.images) - set(IMAGE_NAMES))
        if unknown:
            raise DataError(f"unknown image names {unknown}; expected {list(IMAGE_NAMES)}")
        for name, data in self.images.items():
            if not bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
                raise DataError(f"image {name!r} is not PNG bytes")
        labels = _numpy(self.labels, "labels")
        if labels is None or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError("labels must be an integer array [H, W] (-1 = background)")
        if labels.size and (labels.min() < -1 or labels.max() > np.iinfo(np.int16).max):
            raise DataError(f"cluster labels must lie in [-1, 32767], got {labels.min()}..")
        arrays = {"labels": labels.astype(np.int16)}
        for name, ndim, dtype in (("responsibilities", 3, np.float16),
                                  ("attribution", 2, np.float32), ("mask", 2, np.float32)):
            array = _numpy(getattr(self, name), name)
            if array is None:
                arrays[name] = None
                continue
            if array.ndim != ndim or array.shape[-2:] != labels.shape:
                raise DataError(f"{name} {array.shape} does not match labels {labels.shape}")
            arrays[name] = array.astype(dtype)
        if arrays["mask"] is not None and (arrays["mask"].min() < 0 or arrays["mask"].max() > 1):
            raise DataError("the mask must lie in [0, 1]")
        object.__setattr__(self, "images", {k: bytes(v) for k, v in self.images.items()})
        for name, array in arrays.items():
            object.__setattr__(self, name, array)


@dataclass(frozen=True)
class ReviewedSample:
    """A stored record with the reviewer's state: overrides (colour -> verdict), the effective
    verdicts (critic's with overrides applied), the note and the masked shares of the image
    (critic's mask and effective mask; None without verdicts)."""

    record: RunRecord
    overrides: dict[str, bool]
    effective_verdicts: dict[str, bool] | None
    note: str | None
    masked_share: float | None
    effective_masked_share: float | None
    shape: tuple[int, int] | None
    generation: int
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditEntry:
    """One change a reviewer made: kind "verdict" (old -> new verdict of `color`), "note", or
    "reset" (an override dropped because the sample was re-critiqued)."""

    id: int
    index: int
    kind: str
    color: str | None
    old_verdict: bool | None
    new_verdict: bool | None
    note: str | None
    reviewer: str | None
    at: str


@dataclass(frozen=True)
class Page:
    """One page of a query: `items`, and `total` matching samples."""

    items: tuple[ReviewedSample, ...]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class RunSummary:
    """Counts of a run. Accuracies compare verdicts with the ground truth where it is known:
    `*_accuracy` over all clusters; `*_spurious_recall` is the design's "verdict accuracy", the
    share of clusters on a spurious region judged "no"."""

    total: int
    by_status: dict[str, int]
    overridden_samples: int
    overridden_clusters: int
    audit_entries: int
    notes: int
    provider_calls: int
    cache_hits: int
    cost_usd: float
    truth_samples: int
    critic_accuracy: float | None
    reviewed_accuracy: float | None
    critic_spurious_recall: float | None
    reviewed_spurious_recall: float | None


@dataclass(frozen=True)
class ExportResult:
    """Paths written by `CritiqueRun.export` and the number of samples in them."""

    verdicts: str
    masks: str
    indices: str
    count: int


def ratio(num: float, den: float) -> float | None:
    return None if not den else float(num) / float(den)
