"""The alignment pipeline, stage by stage (the one place where `vision/` meets `engine/`):

1-3 `explain.explain_segment_render` / `explain.rendered_samples` (captum, PPEPS-WGM, render);
4-6 `critique.critique_samples` (Critic & Judge through a `CriticSession`, masks);
7   `training.AlignmentTraining` (RRR, streaming or after the critique);
then `align.align` evaluates before and after and returns an `AlignResult`.
"""

from lvlmva.pipeline.align import align, align_sync, choose_alignment_indices, resolve_spec
from lvlmva.pipeline.options import CritiqueOptions, TrainOptions
from lvlmva.pipeline.records import AlignResult, CritiqueCounts, RenderedSample, SampleRecord
from lvlmva.pipeline.training import default_lambda

__all__ = [
    "AlignResult",
    "CritiqueCounts",
    "CritiqueOptions",
    "RenderedSample",
    "SampleRecord",
    "TrainOptions",
    "align",
    "align_sync",
    "choose_alignment_indices",
    "default_lambda",
    "resolve_spec",
]
