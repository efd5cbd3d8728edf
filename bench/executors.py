"""Vision throughput of the critique run's executors: explain + segment + render (+ the
prediction) of N images, drained as fast as they come (no LVLM), through the local thread and
through Ray actors.

    python bench/executors.py                                   # mlp-28, local vs ray 1 and 2
    python bench/executors.py --case resnet18-64 --images 64 --executors local ray:1 ray:2
    python bench/executors.py --address auto --executors ray:8 --gpus 0.25 --images 20000

`ray:K` runs K actors of `--cpus` CPUs (and `--gpus` GPUs) each, on a fresh local cluster of
`--num-cpus` CPUs unless `--address` names one. Reported per executor: wall time from the call
to the last sample (actor start and model shipping included), seconds to the first sample,
and the steady rate (images after the first batch of every worker over the time after it),
the figure to multiply by the number of workers when sizing a cluster (docs/throughput.md).
Models have random seeded weights (the cost of an explanation does not depend on them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time

import torch

from lvlmva.pipeline.executors import ExecutorSettings, VisionJob, open_executor
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.models import build_model

CASES = {
    "mlp-28": ("mlp", "decoy-digits", {}),
    "resnet18-64": ("resnet18", "synth-lesions", {}),
    "resnet50-224": ("resnet50", "synth-lesions", {"image_size": 224, "n_train": 200,
                                                   "n_val": 8, "n_test": 8}),
}  # fmt: skip


async def drain(settings: ExecutorSettings, model, split, n: int, batch: int) -> dict:
    """Wall, first-sample and steady figures of one executor over the first `n` images."""
    options = CritiqueOptions(explain_batch=batch)
    indices = torch.arange(min(n, len(split)))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    arrivals = []
    async with open_executor(settings) as executor:
        opened = time.perf_counter()
        job = VisionJob(model, split, indices, options, seed=0, device=torch.device("cpu"))
        stream = executor.rendered(job, timings)
        async for _ in stream:
            arrivals.append(time.perf_counter())
    workers = int(timings.get("vision_workers", 1))
    warm = min(len(arrivals) - 1, workers * batch)  # after every worker's first batch
    steady = (len(arrivals) - warm) / max(arrivals[-1] - arrivals[warm - 1], 1e-9) if warm else 0
    return {
        "executor": settings.kind if settings.kind == "local" else f"ray:{workers}",
        "images": len(arrivals),
        "open_s": round(opened - started, 2),
        "first_sample_s": round(arrivals[0] - started, 2),
        "wall_s": round(arrivals[-1] - started, 2),
        "images_per_s_wall": round(len(arrivals) / (arrivals[-1] - started), 2),
        "images_per_s_steady": round(steady, 2),
        "worker_seconds": round(timings.get("vision_s", 0.0), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=tuple(CASES), default="mlp-28")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="explain_batch (per actor call)")
    parser.add_argument("--executors", nargs="+", default=["local", "ray:1", "ray:2"])
    parser.add_argument("--address", help="an existing Ray cluster (default: a new local one)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    arch, dataset, options = CASES[args.case]
    split = load_dataset(dataset, seed=0, **options).train
    torch.manual_seed(0)
    model = build_model(arch, load_dataset(dataset, seed=0, **options).info).eval()
    header = {"case": args.case, "python": platform.python_version(), "torch": torch.__version__,
              "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[:2]}  # fmt: skip
    print(json.dumps(header), flush=True)
    results = []
    for name in args.executors:
        kind, _, workers = name.partition(":")
        if kind == "ray" and args.address is None:
            import ray

            if not ray.is_initialized():
                ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR")
        settings = ExecutorSettings(kind, address=args.address, workers=int(workers or 1),
                                    cpus_per_worker=args.cpus, gpus_per_worker=args.gpus)
        result = asyncio.run(drain(settings, model, split, args.images, args.batch))
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"header": header, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
