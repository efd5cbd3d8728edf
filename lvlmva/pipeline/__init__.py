"""The alignment pipeline, stage by stage (the one place where `vision/` meets `engine/`):

1-3 `explain.explain_segment_render` / `explain.rendered_samples` (captum, PPEPS-WGM, render);
4-6 `critique.critique_stream` (Critic & Judge through a `CriticSession`, `votes` samples per
    image), `masking.RobustMasks` (verdicts pooled with similar clusters, masks);
7   `training.AlignmentTraining` (RRR for a grid of lambdas, streaming or after the critique);
then `selection` picks a lambda on validation, or keeps the original, and `align.align`
evaluates before and after and returns an `AlignResult`.
"""

from lvlmva.pipeline.align import align, align_sync, choose_alignment_indices, resolve_spec
from lvlmva.pipeline.executors import ExecutorSettings
from lvlmva.pipeline.options import CritiqueOptions, TrainOptions
from lvlmva.pipeline.records import AlignResult, CritiqueCounts, RenderedSample, SampleRecord
from lvlmva.pipeline.selection import Selection

__all__ = [
    "AlignResult",
    "CritiqueCounts",
    "CritiqueOptions",
    "ExecutorSettings",
    "RenderedSample",
    "SampleRecord",
    "Selection",
    "TrainOptions",
    "align",
    "align_sync",
    "choose_alignment_indices",
    "resolve_spec",
]
