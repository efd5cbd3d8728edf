"""`lvlmva critique`: a durable critique run over a dataset split (explain, segment, render,
Critic & Judge; no retraining), resumable and extendable, for review and `align --critique`."""

from __future__ import annotations

import argparse

from lvlmva.commands.common import (
    Command,
    add_critic_arguments,
    add_dataset_arguments,
    critic_settings,
    load_model_and_data,
    resolve_device,
)

COMMAND = Command(
    "critique",
    help="critique a model's explanations over a dataset split into a durable run folder",
    description="Explain samples of a split with the model, segment and render them, and let "
    "the LVLM Critic & Judge give a verdict per cluster; every sample is written to the run "
    "folder as it completes (images, clusters, attribution, critique, verdicts, mask, cost). "
    "The same command again resumes (stored samples are skipped, cached answers are not paid "
    "again); a larger --n or --all appends. Review it with `lvlmva review RUN`, train from it "
    "with `lvlmva align --critique RUN`.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint to explain (`lvlmva train`)")
    add_dataset_arguments(p, dataset_help="dataset name (default: the model's own)")
    p.add_argument("--spec", help="task spec file or built-in name (default: the dataset's task)")
    add_critic_arguments(p)
    count = p.add_mutually_exclusive_group()
    count.add_argument("--n", type=int, default=1000, help="samples to critique (default 1000)")
    count.add_argument("--all", action="store_true", help="critique every sample of the split")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="split to critique (default train: the one `align --critique` trains on)")
    p.add_argument("--clusters", type=int, default=7, help="PPEPS-WGM clusters per image")
    p.add_argument("--votes", type=int, default=1, help="Critic samples per image, colours "
                   "listed in another order each time; the run stores the majority and how "
                   "many agreed (default 1; each vote costs one Critic and one Judge call)")
    p.add_argument("--method", default="deeplift-shap", help="attribution method")
    p.add_argument("--masks", choices=("soft", "hard"), default="soft",
                   help="mask rule stored with the run (default soft)")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip fsync per sample (safe against a killed process, not a power cut)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order and explanations")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="the run folder (created, or resumed)")
    _executor_arguments(p)


def _executor_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "where the vision stages run",
        "explain, segment and render run in a thread here (local) or in actors on a Ray "
        "cluster (ray; pip install -c constraints.txt -e '.[ray]'); the LVLM calls always "
        "leave from this process, under one rate limit, budget and cache (docs/throughput.md)",
    )
    group.add_argument("--executor", default="local", help="local (default) | ray")
    group.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, "
                       "else a new local cluster)")
    group.add_argument("--ray-workers", type=int,
                       help="vision actors (default: as many as the cluster's CPUs/GPUs hold)")
    group.add_argument("--ray-cpus", type=float, default=1.0,
                       help="CPUs per vision actor (default 1)")
    group.add_argument("--ray-gpus", type=float, default=0.0,
                       help="GPUs per vision actor (default 0: CPU workers; 0.25: four per GPU)")


def executor_settings(args: argparse.Namespace):
    """The `ExecutorSettings` of the flags; ConfigError for an unknown --executor."""
    from lvlmva.pipeline.executors import ExecutorSettings, get_executor

    get_executor(args.executor)
    return ExecutorSettings(
        args.executor, address=args.ray_address, workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus, gpus_per_worker=args.ray_gpus,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from lvlmva.critics import get_critic
    from lvlmva.pipeline import CritiqueOptions
    from lvlmva.pipeline.critique_run import critique_run, file_sha256
    from lvlmva.pipeline.executors import open_executor

    critic = critic_settings(args)
    executor = executor_settings(args)
    print(get_critic(critic.kind).describe(critic), flush=True)
    print(open_executor(executor).describe(), flush=True)
    device = resolve_device(args.device)
    checkpoint, splits = load_model_and_data(args, device)
    options = CritiqueOptions(
        n_clusters=args.clusters, attribution=args.method, soft_masks=args.masks == "soft",
        votes=args.votes,
    )
    result = asyncio.run(
        critique_run(
            checkpoint.model, splits, args.out, args.spec, critic=critic, critique=options,
            split=args.split, n=None if args.all else args.n, seed=args.seed, device=device,
            progress=not args.quiet, checkpoint_sha256=file_sha256(args.model),
            model_path=str(Path(args.model).resolve()), sync=not args.no_fsync,
            executor=executor,
        )
    )  # fmt: skip
    print(result.summary(), flush=True)
    print(f"Review it: lvlmva review {args.out}; train from it: lvlmva align --critique "
          f"{args.out} --model {args.model} --out DIR")
    return 0
