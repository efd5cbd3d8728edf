"""Pipeline stages 1-3 for a batch of training samples: explain (captum), segment (PPEPS-WGM)
and render the three Critic images; and a stream of them computed ahead of the critique."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator

import torch
from torch import Tensor, nn

from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import RenderedSample
from lvlmva.vision.datasets.base import ShortcutDataset

__all__ = ["PREFETCH_BATCHES", "explain_segment_render", "rendered_samples"]

PREFETCH_BATCHES = 2  # explained batches held ready ahead of the critique


def explain_segment_render(
    model: nn.Module,
    split: ShortcutDataset,
    batch: Tensor,
    options: CritiqueOptions,
    *,
    seed: int,
    device: torch.device,
) -> list[RenderedSample]:
    """The samples `batch` (indices into `split`) explained for their true class against
    backgrounds drawn from `split` (the same for every batch under `seed`; forward/backward
    passes sized for the model and device), segmented on `device` and rendered on a thread
    pool, with the model's prediction. CPU/GPU work: call it in a thread."""
    from lvlmva.vision.attribution import explain
    from lvlmva.vision.modes import on_device
    from lvlmva.vision.ppeps import segment
    from lvlmva.vision.render import render_many

    images = split.images[batch]
    labels = split.labels[batch]
    attributions = explain(
        model,
        images,
        labels,
        method=options.attribution,
        baselines=split.images,
        device=device,
        seed=seed,  # the same backgrounds for every batch and draws keyed by the image: a
    )  # sample's explanation does not depend on its batch (a resumed run renders what one would)
    seg = segment(attributions, options.n_clusters, seed=seed, device=device)
    rendered = render_many(images, seg.labels)
    with torch.no_grad(), on_device(model, device):  # and back: the caller's model stays put
        probabilities = model(images.to(device)).softmax(dim=-1).cpu()
    confidence, prediction = probabilities.max(dim=-1)
    summed = attributions.sum(dim=1).cpu()
    return [
        RenderedSample(
            index=index,
            label=int(labels[j]),
            cluster_labels=seg.labels[j],
            responsibilities=seg.responsibilities[j],
            images=rendered[j],
            attribution=summed[j],
            prediction=int(prediction[j]),
            confidence=float(confidence[j]),
        )
        for j, index in enumerate(batch.tolist())
    ]


async def rendered_samples(
    model: nn.Module,
    split: ShortcutDataset,
    indices: Tensor,
    options: CritiqueOptions,
    *,
    seed: int,
    device: torch.device,
    timings: dict[str, float] | None = None,
) -> AsyncIterator[RenderedSample]:
    """`explain_segment_render` over `indices` in batches of `options.explain_batch`, in a
    worker thread that runs at most `PREFETCH_BATCHES` batches ahead of the consumer: the
    vision work of the next batch overlaps the LVLM's latency on this one. The thread's wall
    time is added to `timings["vision_s"]`; an error in it ends the stream with that error.
    A model on another device is copied there once for the stream (the caller's stays put)."""
    from lvlmva.vision.modes import is_on

    if not is_on(model, device):
        model = copy.deepcopy(model).to(device)
    ready: asyncio.Queue[list[RenderedSample] | BaseException | None] = asyncio.Queue(
        PREFETCH_BATCHES
    )

    async def produce() -> None:
        try:
            for start in range(0, len(indices), options.explain_batch):
                batch = indices[start : start + options.explain_batch]
                started = time.perf_counter()
                rendered = await asyncio.to_thread(
                    explain_segment_render, model, split, batch, options, seed=seed, device=device
                )
                if timings is not None:
                    timings["vision_s"] = timings.get("vision_s", 0.0) + (
                        time.perf_counter() - started
                    )
                await ready.put(rendered)
        except Exception as exc:
            await ready.put(exc)
        else:
            await ready.put(None)

    producer = asyncio.ensure_future(produce())
    try:
        while (item := await ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            for sample in item:
                yield sample
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
