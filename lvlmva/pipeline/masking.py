"""Pipeline stage 6 with robust verdicts: every critiqued sample's own "no" shares (one verdict,
or the vote of several Critic samples) are pooled with those of similar clusters in other
samples (`lvlmva.vision.consensus`) and become its correction mask.

`RobustMasks` keeps what that needs per alignment position (cluster map, responsibilities,
descriptors, shares); `stage(length)` gives the masks of the first `length` positions with the
consensus taken over exactly those positions (the trainer's schedule asks for fixed prefixes,
so the masks it trains on never depend on the order answers arrived in); `finalize()` writes
the consensus of every position into the records; `masks_for(...)` gives the masks of other
samples (the critiqued validation images) with the alignment samples as their neighbours.
Records without clusters but with a mask (ground truth) pass through unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import RenderedSample, SampleRecord
from lvlmva.vision.consensus import (
    DEFAULT_NEIGHBOURS,
    cluster_descriptors,
    consensus_weights,
    neighbour_consensus,
    transferred_shares,
    weighted_mask,
)
from lvlmva.vision.datasets.base import ShortcutDataset

__all__ = [
    "CritiquedSample", "RobustMasks", "critiqued", "fixed_mask", "robust_summary",
    "uncritiqued", "uses_confidence",
]


@dataclass(frozen=True)
class CritiquedSample:
    """What the consensus needs of one critiqued sample: its record, its clusters
    (`responsibilities` kept as float16), their descriptors and "no" shares, in colour order;
    `pinned` [n] marks the clusters whose share is a reviewer's verdict: kept as given, never
    pooled, though they count as neighbours of the others."""

    record: SampleRecord
    responsibilities: Tensor | None
    features: Tensor  # [n, F]
    no_share: Tensor  # [n]
    pinned: Tensor | None = None  # [n] bool

    @property
    def voted(self) -> bool:
        return self.record.verdicts is not None and len(self.no_share) > 0


def critiqued(
    sample: RenderedSample,
    record: SampleRecord,
    image: Tensor,
    n_clusters: int,
    no_share: Mapping[str, float] | None = None,
) -> CritiquedSample:
    """The `CritiquedSample` of a rendered sample, its record and its image [C, H, W];
    `no_share` defaults to the record's own verdicts (1.0 for "no")."""
    if record.verdicts is None:
        return CritiquedSample(record, None, torch.zeros(0, 0), torch.zeros(0))
    shares = no_share or {c: 0.0 if ok else 1.0 for c, ok in record.verdicts.items()}
    features = cluster_descriptors(image, sample.cluster_labels, sample.cluster_ids, n_clusters)
    return CritiquedSample(
        record,
        sample.responsibilities.to(torch.float16),
        features,
        torch.tensor([float(shares[c]) for c in sample.colors]),
    )


def uncritiqued(
    sample: RenderedSample, record: SampleRecord, image: Tensor, n_clusters: int
) -> CritiquedSample:
    """A rendered sample no critic saw (`record` without verdicts): its clusters' descriptors,
    for a mask transferred from the nearest critiqued clusters (`RobustMasks.masks_for`)."""
    features = cluster_descriptors(image, sample.cluster_labels, sample.cluster_ids, n_clusters)
    return CritiquedSample(
        record, sample.responsibilities.to(torch.float16), features, torch.zeros(0)
    )


def fixed_mask(record: SampleRecord) -> CritiquedSample:
    """A sample whose mask is given (ground truth): it passes through unchanged."""
    return CritiquedSample(record, None, torch.zeros(0, 0), torch.zeros(0))


# The share of verdicts the neighbours overturn above which the run warns that the critic is
# unreliable. Over 257 simulated runs of the robust study with the default mechanism (every
# task, seed, error model, J and sample count; docs/data/robust/) it was at most 0.19 for
# critics at 0.87 to 1.0 and at least 0.32 at 0.42 to 0.46; 0.25 lies between.
# A simulated figure, not a real model's: errors a real LVLM repeats on similar clusters are
# not overturned, so a low share does not prove a good critic.
DISAGREEMENT_WARNING = 0.25


def robust_summary(options: CritiqueOptions, records: Sequence[SampleRecord]) -> dict[str, Any]:
    """The robust-verdict settings of a run, how many verdicts the neighbours overturned and,
    where that share is above `DISAGREEMENT_WARNING`, a warning that the critic is unreliable
    and the model check may be fooled by a shortcut it missed (docs/robust.md)."""
    to_yes = to_no = clusters = 0
    for r in records:
        if r.verdicts is None or r.consensus is None:
            continue
        for color, relevant in r.verdicts.items():
            flagged = r.consensus[color] > 0.5
            clusters += 1
            to_yes += (not relevant) and not flagged
            to_no += relevant and flagged
    share = (to_yes + to_no) / clusters if clusters else None
    graded = sum(r.votes is not None for r in records) if options.votes == 1 else 0
    warning = None
    if share is not None and share > DISAGREEMENT_WARNING:
        warning = (
            f"the neighbours overturned {share:.0%} of the critic's verdicts (simulated critics "
            f"at 0.87 or better: at most 19%), so the critic looks unreliable; the model check "
            "cannot see a shortcut the critic missed, and the returned model may be worse on "
            "data where the shortcut no longer holds. Review the critique (`lvlmva critique`, "
            "`lvlmva review`) before trusting this model"
        )
    return {
        "votes": options.votes,
        "neighbours": options.neighbours,
        "neighbour_kernel": options.neighbour_kernel,
        "confidence_weights": options.confidence,
        "confidence_weights_used": uses_confidence(options, share),
        "graded_by_logprobs": graded,  # samples whose shares came from token log-probabilities
        "clusters": clusters,
        "overturned_no_to_yes": to_yes,
        "overturned_yes_to_no": to_no,
        "overturned_share": None if share is None else round(share, 4),
        "warning": warning,
    }


class RobustMasks:
    """Correction masks from robust verdicts (see the module docstring). `add` is called from
    the critique (event-loop thread), `stage` from the trainer's thread."""

    def __init__(self, split: ShortcutDataset, options: CritiqueOptions, n: int) -> None:
        self.split = split
        self.options = options
        self._entries: list[CritiquedSample | None] = [None] * n
        self._lock = threading.Lock()

    def add(self, position: int, entry: CritiquedSample) -> None:
        with self._lock:
            self._entries[position] = entry

    def entries(self, length: int | None = None) -> list[CritiquedSample]:
        with self._lock:
            chosen = self._entries[: len(self._entries) if length is None else length]
        return [e for e in chosen if e is not None]

    def stage(self, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """Images, masks and labels of the positions < `length` that have a mask."""
        entries = [e for e in self.entries(length) if e.voted or e.record.mask is not None]
        masks = self._masks(entries, entries)
        index = torch.tensor([e.record.index for e in entries], dtype=torch.long)
        split = self.split
        if not entries:
            _, c, h, w = split.images.shape
            return torch.zeros(0, c, h, w), torch.zeros(0, h, w), torch.zeros(0, dtype=torch.long)
        return split.images[index], torch.stack(masks), split.labels[index]

    def finalize(self) -> None:
        """Write every position's consensus (`record.consensus`) and mask into its record."""
        entries = [e for e in self.entries() if e.voted]
        self._masks(entries, entries, write=True)

    def flags_anything(self) -> bool:
        """Whether any alignment sample's mask (after `finalize`) marks a pixel."""
        return any(e.record.mask is not None and bool(e.record.mask.any()) for e in self.entries())

    def masks_for(self, extra: Sequence[CritiquedSample]) -> list[Tensor | None]:
        """Masks of `extra` (e.g. validation samples), the alignment samples their neighbours;
        a sample no critic saw (`uncritiqued`) gets the mask its clusters' nearest critiqued
        clusters vote for (no LVLM call); None for a sample whose critique failed. Their
        records are updated too."""
        voted = [e for e in extra if e.voted]
        unseen = [e for e in extra if e.record.verdicts is None and len(e.features)]
        pool = [e for e in self.entries() if e.voted] + voted
        masks = dict(zip(map(id, voted), self._masks(voted, pool, write=True), strict=True))
        masks.update(zip(map(id, unseen), self._transferred(unseen), strict=True))
        return [masks.get(id(e), e.record.mask) for e in extra]

    def _transferred(self, targets: Sequence[CritiquedSample]) -> list[Tensor | None]:
        """Masks of samples no critic saw, from the finalized alignment samples' consensus."""
        pool = [e for e in self.entries() if e.voted and e.record.consensus is not None]
        if not pool or not targets:
            return [None] * len(targets)
        pooled = {id(e): torch.tensor([e.record.consensus[c] for c in e.record.colors])
                  for e in pool}  # fmt: skip
        shares = torch.cat([pooled[id(e)] for e in pool])
        features = torch.cat([e.features for e in pool])
        k = self.options.neighbours or DEFAULT_NEIGHBOURS
        p = transferred_shares(features, shares, torch.cat([e.features for e in targets]), k=k)
        if bool(torch.isnan(p).any()):
            return [None] * len(targets)
        confidence = uses_confidence(self.options, _pool_share(pool, pooled))
        out: list[Tensor | None] = []
        for entry, part in zip(targets, torch.split(p, [len(e.features) for e in targets]),
                               strict=True):  # fmt: skip
            record = entry.record
            record.mask = weighted_mask(
                record.cluster_labels, record.cluster_ids,
                consensus_weights(part, confidence=confidence),
                responsibilities=entry.responsibilities, soft=self.options.soft_masks,
            )  # fmt: skip
            record.consensus = {c: round(v, 4) for c, v in zip(record.colors, part.tolist(),
                                                               strict=True)}  # fmt: skip
            out.append(record.mask)
        return out

    def _masks(
        self,
        targets: Sequence[CritiquedSample],
        pool: Sequence[CritiquedSample],
        *,
        write: bool = False,
    ) -> list[Tensor]:
        """The mask of every target, with the consensus taken over `pool` (targets included)."""
        voted = [e for e in pool if e.voted]
        p_spurious: dict[int, Tensor] = {}
        if voted:
            features = torch.cat([e.features for e in voted])
            shares = torch.cat([e.no_share for e in voted])
            owner = torch.cat([torch.full((len(e.no_share),), i) for i, e in enumerate(voted)])
            pooled, _ = neighbour_consensus(
                features, shares, owner, k=self.options.neighbours,
                kernel=self.options.neighbour_kernel,
            )  # fmt: skip
            for e, part in zip(voted, torch.split(pooled, [len(e.no_share) for e in voted]),
                               strict=True):  # fmt: skip
                if e.pinned is not None:
                    part = torch.where(e.pinned, e.no_share.float(), part)
                p_spurious[id(e)] = part
        share = _pool_share(voted, p_spurious) if self.options.confidence == "auto" else None
        confidence = uses_confidence(self.options, share)
        out = []
        for entry in targets:
            if not entry.voted:
                out.append(entry.record.mask)
                continue
            p = p_spurious[id(entry)]
            weights = consensus_weights(p, confidence=confidence)
            record = entry.record
            if _own_weights(record) is not None and torch.equal(weights, _own_weights(record)):
                mask = record.mask  # the critic's own mask, as record_for made it
            else:
                mask = weighted_mask(
                    record.cluster_labels,
                    record.cluster_ids,
                    weights,
                    responsibilities=entry.responsibilities,
                    soft=self.options.soft_masks,
                )
            if write:
                record.mask = mask
                pairs = zip(record.colors, p.tolist(), strict=True)
                record.consensus = {c: round(v, 4) for c, v in pairs}
            out.append(mask)
        return out


def uses_confidence(options: CritiqueOptions, share: float | None) -> bool:
    """Whether the masks are weighted by agreement: `options.confidence` True, or "auto" and the
    neighbours overturned at most `DISAGREEMENT_WARNING` of the verdicts (`share`). Agreement
    is a confidence only while most verdicts are right; past that, the 0/1 rule."""
    if options.confidence == "auto":
        return share is not None and share <= DISAGREEMENT_WARNING
    return bool(options.confidence)


def _pool_share(voted: Sequence[CritiquedSample], pooled: Mapping[int, Tensor]) -> float | None:
    """The share of the pool's verdicts (own "no" share > 1/2) the consensus overturns."""
    if not voted:
        return None
    own = torch.cat([e.no_share for e in voted]) > 0.5
    after = torch.cat([pooled[id(e)] for e in voted]) > 0.5
    return float((own != after).float().mean()) if len(own) else None


def _own_weights(record: SampleRecord) -> Tensor | None:
    """The 0/1 weights of a single-vote record's own verdicts when it has its own mask."""
    if record.mask is None or record.votes is not None or record.verdicts is None:
        return None
    return torch.tensor([0.0 if record.verdicts[c] else 1.0 for c in record.colors])
