"""What `align` does, in two frozen groups: what to critique (`CritiqueOptions`) and how to
train (`TrainOptions`). How the critic is reached is `lvlmva.critics.CriticSettings`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lvlmva.errors import ConfigError

__all__ = ["CritiqueOptions", "TrainOptions", "split_options"]


@dataclass(frozen=True)
class CritiqueOptions:
    """`n_align` training samples are explained with `attribution` (captum, batches of
    `explain_batch`), segmented into `n_clusters` PPEPS-WGM clusters, rendered and critiqued;
    `soft_masks` weights each masked pixel by the rejected clusters' responsibility instead of
    0/1 (docs/benchmarks.md: it met both group-robustness targets where 0/1 masks missed
    synth-knee, and matched them on decoy-mnist).

    Robust verdicts (docs/robust.md): `votes` Critic samples per image, the colours listed in a
    different order each time, and a vote per cluster (self-consistency; 1 = one sample);
    `neighbours`: each verdict pooled with those of the most similar clusters of other images
    (cross-sample consistency, no LVLM call; 0 = off), each neighbour counted fully
    (`neighbour_kernel="uniform"`) or as far as it is alike (`"gaussian"`,
    `lvlmva.vision.consensus.neighbour_weights`); `confidence`: mask weights from the
    agreement instead of 0/1 (True), or only while the neighbours overturn at most a quarter
    of the verdicts ("auto", `lvlmva.pipeline.masking.uses_confidence`). `val_samples`:
    validation images critiqued for the counterfactual check that chooses lambda when the
    validation split has no usable groups (None: max(100, n_align // 4), at most the split;
    0: none); `val_masks`: their masks from the critic ("critique", two LVLM calls each) or
    from the nearest critiqued clusters of the alignment samples ("neighbours", no call;
    `lvlmva.pipeline.masking.RobustMasks.masks_for`)."""

    n_align: int = 1000
    n_clusters: int = 7
    attribution: str = "deeplift-shap"
    explain_batch: int = 64
    soft_masks: bool = True
    votes: int = 1
    neighbours: int = 10
    neighbour_kernel: Literal["uniform", "gaussian"] = "uniform"
    confidence: bool | Literal["auto"] = False
    val_samples: int | None = None
    val_masks: Literal["critique", "neighbours"] = "critique"

    def __post_init__(self) -> None:
        if self.votes < 1:
            raise ConfigError(f"--votes must be at least 1, got {self.votes}")
        if self.neighbours < 0:
            raise ConfigError(f"--neighbours must be 0 or more, got {self.neighbours}")
        if self.neighbour_kernel not in ("uniform", "gaussian"):
            raise ConfigError(
                f"--neighbour-kernel must be uniform or gaussian, got {self.neighbour_kernel!r}"
            )
        if self.confidence not in (True, False, "auto"):
            raise ConfigError(
                f"--confidence-weights must be on, off or auto, got {self.confidence!r}"
            )
        if self.val_masks not in ("critique", "neighbours"):
            raise ConfigError(
                f"--val-masks must be critique or neighbours, got {self.val_masks!r}"
            )
        if self.val_samples is not None and self.val_samples < 0:
            raise ConfigError(f"--val-samples must be 0 or more, got {self.val_samples}")
        if self.n_align <= 0:
            raise ConfigError(f"--n-align must be positive, got {self.n_align}")
        if self.n_clusters < 1:
            raise ConfigError(f"--clusters must be at least 1, got {self.n_clusters}")
        if self.explain_batch < 1:
            raise ConfigError(f"explain_batch must be at least 1, got {self.explain_batch}")


@dataclass(frozen=True)
class TrainOptions:
    """RRR training. `lam`: the penalty weight; None (default): one model per weight of
    `lam_scales` times lambda0 (the weight at which the penalty starts as large as the
    cross-entropy, `lvlmva.vision.rrr_grid`) is trained and the best on validation is kept
    (`lvlmva.pipeline.selection`). `keep_original`: when no aligned model beats the original on
    that check, the original is returned, with a warning. `start="retrain"` trains the
    architecture afresh from weights drawn like `build_model`'s under the run's seed;
    `"finetune"` continues from the original weights. `streaming` starts training once
    `min_pool_fraction` of the masks exist; either way the trainer draws from a prefix of the
    alignment order that grows on a fixed schedule (`lvlmva.vision.schedule`), so streamed and
    sequential runs give the same model (bit-reproducible on CPU)."""

    lam: float | None = None
    start: Literal["retrain", "finetune"] = "retrain"
    gamma: float = 0.0
    epochs: int = 5
    lr: float = 1e-3
    min_pool_fraction: float = 0.25
    streaming: bool = True
    lam_scales: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    keep_original: bool = True

    def __post_init__(self) -> None:
        if self.start not in ("retrain", "finetune"):
            raise ConfigError(f"start must be 'retrain' or 'finetune', got {self.start!r}")
        if self.lam is not None and not self.lam >= 0:
            raise ConfigError(f"--lambda must be 0 or more, got {self.lam}")
        if not self.lam_scales or any(not v > 0 for v in self.lam_scales):
            raise ConfigError(f"lam_scales must be positive numbers, got {self.lam_scales}")
        if not 0.0 < self.min_pool_fraction <= 1.0:
            raise ConfigError(
                f"min_pool_fraction must be in (0, 1], got {self.min_pool_fraction}"
            )


def split_options(
    critique: CritiqueOptions | None, training: TrainOptions | None, shorthand: dict[str, Any]
) -> tuple[CritiqueOptions, TrainOptions]:
    """The two groups, with flat keyword arguments (`n_align=100, epochs=2`) routed into the
    group that has a field of that name; an unknown name is a TypeError listing the known ones."""
    critique, training = critique or CritiqueOptions(), training or TrainOptions()
    names = {
        "critique": {f.name for f in dataclasses.fields(CritiqueOptions)},
        "training": {f.name for f in dataclasses.fields(TrainOptions)},
    }
    routed: dict[str, dict[str, Any]] = {"critique": {}, "training": {}}
    for name, value in shorthand.items():
        group = next((g for g, fields in names.items() if name in fields), None)
        if group is None:
            known = ", ".join(sorted(names["critique"] | names["training"]))
            raise TypeError(f"align() got an unexpected keyword argument {name!r} ({known})")
        routed[group][name] = value
    if routed["critique"]:
        critique = dataclasses.replace(critique, **routed["critique"])
    if routed["training"]:
        training = dataclasses.replace(training, **routed["training"])
    return critique, training
