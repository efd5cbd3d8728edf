"""The Ray executor: the vision stages on a Ray cluster, in actors that each hold one copy of
the model and the split (shipped once through the object store with `ray.put`, fetched once
per actor) and explain, segment and render one batch of indices per call, on CPU or, with a
GPU share, on CUDA.

The driver keeps `batches_ahead` batches queued per actor and yields samples as batches finish,
so the vision work runs ahead of the critique but never further than that. Nothing here talks
to an LVLM: the driver's one engine holds the rate limit, the budget and the answer cache for
every worker. A killed actor is restarted by Ray (`max_restarts`) and its unfinished batches
rerun (`max_task_retries`); a batch gives the same samples on any worker (the backgrounds and
the clustering depend on the seed only), and the driver yields each index once. Ray is
imported here only, when the executor opens (`pip install -c constraints.txt -e '.[ray]'`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError
from lvlmva.pipeline.executors.base import VisionExecutor, VisionJob, index_batches
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import RenderedSample
from lvlmva.vision.datasets.base import ShortcutDataset

__all__ = ["RayExecutor", "VisionWorker", "import_ray"]

INSTALL_HINT = "pip install -c constraints.txt -e '.[ray]'"


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from exc
    return ray


def _compact(tensor: Tensor) -> Tensor:
    """A CPU copy owning only its own elements (a view pickles its whole batch's storage)."""
    return tensor.detach().cpu().clone()


def _on_cpu(sample: RenderedSample) -> RenderedSample:
    """The sample as the driver receives it: its tensors on the CPU (a GPU worker's results go
    to a CPU driver) and compact, so a batch's transfer carries no more than its samples."""
    return dataclasses.replace(
        sample,
        cluster_labels=_compact(sample.cluster_labels),
        responsibilities=_compact(sample.responsibilities),
        attribution=None if sample.attribution is None else _compact(sample.attribution),
    )


class VisionWorker:
    """The body of one Ray actor: `render(shipped, batch)` = stages 1-3 of the indices `batch`
    and the seconds it took. `shipped` (the object refs of the model and the split, nested so
    Ray passes them unresolved) is fetched on the first call and held for the actor's life; a
    restarted actor fetches it again with the call Ray reruns (the driver holds the refs)."""

    def __init__(self, options: CritiqueOptions, seed: int, threads: int, use_gpu: bool) -> None:
        import lvlmva.pipeline.explain  # noqa: F401  (its imports, before the first batch)

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.options, self.seed = options, seed
        self.model: nn.Module | None = None
        self.split: ShortcutDataset | None = None

    def render(self, shipped: list[Any], batch: Tensor) -> tuple[list[RenderedSample], float]:
        import ray

        from lvlmva.pipeline.explain import explain_segment_render

        started = time.perf_counter()
        if self.model is None:
            model, self.split = ray.get(shipped)
            self.model = model.to(self.device).eval()
        samples = explain_segment_render(
            self.model, self.split, batch, self.options, seed=self.seed, device=self.device
        )
        return [_on_cpu(s) for s in samples], time.perf_counter() - started


class RayExecutor(VisionExecutor):
    """Stages 1-3 in Ray actors (see the module's docstring). The driver's `device` is not
    used: an actor computes on CUDA when it has a GPU share (`gpus_per_worker`), else on its
    CPUs (`cpus_per_worker` torch threads)."""

    name = "ray"
    summary = "actors on a Ray cluster (--executor ray)"

    _ray: Any = None
    _started = False
    _actors: list[Any]
    _shipped: list[Any]

    def describe(self) -> str:
        s = self.settings
        where = s.address or "ray.init()'s default (RAY_ADDRESS, else a new local cluster)"
        device = f"{s.gpus_per_worker:g} GPU" if s.gpus_per_worker else f"{s.cpus_per_worker:g} CPU"
        workers = s.workers or "as many as fit"
        return f"vision: Ray actors at {where}, {workers} workers, {device} each"

    def preflight(self) -> None:
        import_ray()

    async def open(self) -> None:
        ray = import_ray()
        self._ray, self._actors, self._shipped = ray, [], []
        if not ray.is_initialized():  # else: the caller's connection (a notebook, the tests)
            import logging

            ray.init(address=self.settings.address, logging_level=logging.WARNING)
            self._started = True

    async def aclose(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors, self._shipped = [], []
        if self._started:
            ray.shutdown()
            self._started = False
        self._ray = None

    def _worker_count(self, n_batches: int) -> int:
        """Actors to start: `workers`, else as many as the cluster's resources hold."""
        s = self.settings
        if s.workers is not None:
            return min(s.workers, n_batches)
        have = self._ray.cluster_resources()
        fits = min(
            have.get("CPU", 0.0) // s.cpus_per_worker if s.cpus_per_worker else math.inf,
            have.get("GPU", 0.0) // s.gpus_per_worker if s.gpus_per_worker else math.inf,
        )
        if fits < 1:
            raise ConfigError(
                f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} "
                f"GPUs, too few for one vision worker of {s.cpus_per_worker:g} CPUs and "
                f"{s.gpus_per_worker:g} GPUs; lower --ray-gpus or give --ray-workers"
            )
        return int(min(fits, n_batches))

    def _start_actors(self, job: VisionJob, n: int) -> list[Any]:
        ray, s = self._ray, self.settings
        for actor in self._actors:  # those of an earlier call
            ray.kill(actor, no_restart=True)
        cpu_model = copy.deepcopy(job.model).cpu().eval()  # a CUDA driver's model loads anywhere
        # Put once, fetched once per actor (and again by a restarted one): held here until the
        # executor closes, and passed with each call, so no actor's constructor needs them.
        self._shipped = [
            ray.put(cpu_model),
            ray.put(ShortcutDataset(job.split.images, job.split.labels)),  # the masks stay here
        ]
        worker = ray.remote(VisionWorker).options(
            num_cpus=s.cpus_per_worker,
            num_gpus=s.gpus_per_worker,
            max_restarts=s.max_restarts,
            max_task_retries=s.max_restarts,
        )
        threads = max(1, int(s.cpus_per_worker))
        use_gpu = s.gpus_per_worker > 0
        self._actors = [
            worker.remote(job.options, job.seed, threads, use_gpu) for _ in range(n)
        ]
        return self._actors

    async def rendered(
        self, job: VisionJob, timings: dict[str, float] | None = None
    ) -> AsyncIterator[RenderedSample]:
        if self._ray is None:
            raise RuntimeError("RayExecutor.rendered() before open(): use `async with`")
        batches = index_batches(job.indices, job.options.explain_batch)
        if not batches:
            return
        actors = self._start_actors(job, self._worker_count(len(batches)))
        if timings is not None:
            timings["vision_workers"] = float(len(actors))
        async for sample in self._collect(actors, deque(batches), timings):
            yield sample

    async def _collect(
        self, actors: list[Any], queue: deque[Tensor], timings: dict[str, float] | None
    ) -> AsyncIterator[RenderedSample]:
        """Keep every actor `batches_ahead` batches busy; yield each finished batch's samples,
        each index once."""
        load = [0] * len(actors)
        running: dict[asyncio.Future[Any], int] = {}
        taken: set[int] = set()

        def submit() -> None:
            while queue and sum(load) < len(actors) * self.settings.batches_ahead:
                k = min(range(len(actors)), key=load.__getitem__)
                ref = actors[k].render.remote(self._shipped, queue.popleft())
                running[asyncio.wrap_future(ref.future())] = k
                load[k] += 1

        submit()
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                finished = []
                for future in done:
                    load[running.pop(future)] -= 1
                    finished.append(self._result(future))
                submit()  # the workers go on while the critique takes these
                for samples, seconds in finished:
                    if timings is not None:
                        timings["vision_s"] = timings.get("vision_s", 0.0) + seconds
                    for sample in samples:
                        if sample.index not in taken:
                            taken.add(sample.index)
                            yield sample
        finally:
            for future in running:
                future.cancel()

    def _result(self, future: asyncio.Future[Any]) -> tuple[list[RenderedSample], float]:
        """A finished batch; a worker that died more often than Ray may restart it is a
        ConfigError (the run keeps what it stored: the same command resumes it)."""
        try:
            return future.result()
        except self._ray.exceptions.RayActorError as exc:
            raise ConfigError(
                f"a Ray vision worker died more than max_restarts={self.settings.max_restarts} "
                f"times ({type(exc).__name__}; out of memory? see `ray logs`); the samples "
                "stored so far are kept: run the same command again to resume"
            ) from exc
