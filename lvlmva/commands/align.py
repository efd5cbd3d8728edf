"""`lvlmva align`: explain, critique with an LVLM (or the simulation), mask, retrain, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvlmva.commands.common import (
    Command,
    add_critic_arguments,
    add_dataset_arguments,
    add_robust_arguments,
    check_positive_flags,
    check_writable,
    critic_settings,
    load_model_and_data,
    resolve_device,
    robust_options,
    train_original,
)

COMMAND = Command(
    "align",
    help="align a model with an LVLM critic (the main job)",
    description="Explain a model's decisions on training samples, let an LVLM Critic & "
    "Judge mark spurious clusters, and retrain with the right-for-the-right-reasons penalty. "
    "With no API configured the offline simulated LVLM is used, and the output says so.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p, dataset_help="dataset name (default: the model's, else decoy-digits)")
    p.add_argument("--model", help="checkpoint to align (default: train the original model first)")
    p.add_argument(
        "--critique",
        metavar="RUN",
        help="train from this critique run's reviewed verdicts and masks (`lvlmva critique`, "
        "`lvlmva review`): no LVLM call; --model defaults to the run's checkpoint",
    )
    p.add_argument(
        "--val-critique",
        metavar="RUN",
        help="with --critique: a critique run of the validation split (`lvlmva critique "
        "--split val`), reviewed or not, for the model check (default: validation masks from "
        "the nearest critiqued clusters of --critique's run)",
    )
    p.add_argument("--arch", default="mlp", help="architecture when training the original model")
    p.add_argument("--train-epochs", type=int, default=5, help="epochs for the original model")
    p.add_argument("--spec", help="task spec file or built-in name (default: the dataset's task)")
    add_critic_arguments(p)
    p.add_argument("--n-align", type=int, default=1000, help="alignment samples to critique")
    p.add_argument("--clusters", type=int, default=7, help="PPEPS-WGM clusters per image")
    p.add_argument("--method", default="deeplift-shap", help="attribution method")
    p.add_argument(
        "--masks",
        choices=("soft", "hard"),
        help="soft (default; with --critique: the run's rule): pixels weighted by the posterior "
        "responsibility of the rejected clusters; hard: 0/1, the union of the rejected clusters",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        help="RRR weight (default: one model per weight of a grid scaled to the task, the best "
        "on validation kept, or the original when none beats it)",
    )
    add_robust_arguments(p)
    p.add_argument("--epochs", type=int, default=5, help="alignment epochs")
    p.add_argument(
        "--start",
        choices=("retrain", "finetune"),
        default="retrain",
        help="train the architecture afresh with the RRR loss (default) or fine-tune the original",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--no-streaming",
        action="store_true",
        help="critique every sample before training starts: slower, but the same result every "
        "run (a streamed run depends on the order the answers arrive in)",
    )
    p.add_argument("--report-samples", type=int, default=12, help="samples shown in report.html")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from lvlmva.critics import get_critic
    from lvlmva.engine.errors import RunStopped
    from lvlmva.errors import ConfigError
    from lvlmva.pipeline import CritiqueOptions, TrainOptions, align, resolve_spec
    from lvlmva.pipeline.critique import require_true_masks

    check_positive_flags(args, "n_align", "clusters", "epochs", "train_epochs", "lr")
    if args.critique:
        return _run_from_critique(args)
    if args.val_critique:
        raise ConfigError("--val-critique RUN goes with --critique RUN (the alignment run)")
    critic = critic_settings(args)
    backend = get_critic(critic.kind)
    print(backend.describe(critic), flush=True)
    out = check_writable(args.out)
    device = resolve_device(args.device)
    checkpoint, splits = load_model_and_data(args, device, default_dataset="decoy-digits")
    # Everything that can be checked is checked before any training or LVLM call.
    critique = CritiqueOptions(
        n_align=args.n_align,
        n_clusters=args.clusters,
        attribution=args.method,
        soft_masks=args.masks != "hard",
        **robust_options(args),
    )
    training = TrainOptions(
        lam=args.lam, start=args.start, epochs=args.epochs, lr=args.lr,
        streaming=not args.no_streaming, keep_original=not args.keep_aligned,
    )  # fmt: skip
    require_true_masks(backend, splits)
    spec = resolve_spec(args.spec, splits) if backend.uses_llm else None
    asyncio.run(backend.preflight(critic))
    if checkpoint is None:
        arch = args.arch
        model = train_original(
            arch, splits, epochs=args.train_epochs, seed=args.seed, device=device,
            progress=not args.quiet,
        )  # fmt: skip
        _save(out / "original.pt", model, arch, splits.info)
    else:
        model, arch = checkpoint.model, checkpoint.arch
    try:
        result = asyncio.run(
            align(
                model, splits, spec, critic=critic, critique=critique, training=training,
                seed=args.seed, device=device, progress=not args.quiet,
            )
        )  # fmt: skip
    except RunStopped as stop:  # write what was done, then end with the one line
        if stop.result is not None:
            _write_outputs(out, stop.result, arch, splits, model, args, device)
        else:
            (out / "metrics.json").write_text(json.dumps(stop.metrics, indent=2) + "\n")
            print(f"Wrote {out / 'metrics.json'}")
        raise
    _write_outputs(out, result, arch, splits, model, args, device)
    return 0


def _save(path: Path, model, arch: str, info, extra: dict | None = None) -> None:
    from lvlmva.vision.checkpoint import save_checkpoint

    save_checkpoint(path, model, arch, info, extra=extra)


def _write_outputs(out: Path, result, arch: str, splits, original, args, device) -> None:
    """model.pt, metrics.json and report.html, then the before/after table."""
    import json

    from lvlmva.pipeline import resolve_spec
    from lvlmva.report import write_align_report

    kept = result.selection is not None and result.selection.kept_original
    extra = {"aligned": not kept, "lambda": result.lam, "critic": result.critic.kind}
    _save(out / "model.pt", result.model, arch, splits.info, extra)
    (out / "metrics.json").write_text(json.dumps(result.metrics_dict(), indent=2) + "\n")
    report = write_align_report(
        out / "report.html", result, splits, original_model=original,
        n_samples=args.report_samples, device=device, spec=resolve_spec(args.spec, splits),
    )  # fmt: skip
    print(result.summary())
    if kept:
        print("The model check kept the original (see the warning): model.pt is the ORIGINAL "
              "model.")  # fmt: skip
    print(f"Wrote {out / 'model.pt'}, {out / 'metrics.json'} and {report}")


def _run_from_critique(args: argparse.Namespace) -> int:
    """`align --critique RUN`: the run's reviewed masks, the model it explained, no LVLM."""
    import asyncio
    import contextlib

    from lvlmva.errors import ConfigError
    from lvlmva.pipeline import TrainOptions
    from lvlmva.pipeline.critique_run import file_sha256
    from lvlmva.pipeline.from_run import align_from_run
    from lvlmva.runs import CritiqueRun

    out = check_writable(args.out)
    device = resolve_device(args.device)
    with CritiqueRun.open(args.critique) as run:
        args.model = args.model or run.manifest.extra.get("model_path")
        if not args.model:
            raise ConfigError(f"give --model: the run {args.critique} names no checkpoint")
        args.dataset = args.dataset or run.manifest.dataset
        checkpoint, splits = load_model_and_data(args, device)
        print(f"Aligning {args.model} from the reviewed critique run {args.critique} "
              f"({run.count()} samples; no LVLM call)", flush=True)
        training = TrainOptions(lam=args.lam, start=args.start, epochs=args.epochs, lr=args.lr,
                                streaming=False)
        with contextlib.ExitStack() as stack:
            val_run = None if args.val_critique is None else stack.enter_context(
                CritiqueRun.open(args.val_critique))  # fmt: skip
            result = asyncio.run(
                align_from_run(
                    checkpoint.model, splits, run, training=training,
                    soft=None if args.masks is None else args.masks == "soft",
                    checkpoint_sha256=file_sha256(args.model), seed=args.seed, device=device,
                    progress=not args.quiet, val_run=val_run, **robust_options(args),
                )
            )  # fmt: skip
        for record in result.samples[: args.report_samples]:  # the report shows their images
            stored = run.arrays(record.index)
            record.images = {n: stored.image(n) for n in ("original", "overlay", "clusters")
                             if n in stored.names}
    _write_outputs(out, result, checkpoint.arch, splits, checkpoint.model, args, device)
    return 0
