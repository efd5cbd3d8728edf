"""`lvlmva train`: train the original (unaligned) model and evaluate it on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from lvlmva.commands.common import Command
from lvlmva.errors import ConfigError

ARCH_CHOICES = ("mlp", "resnet18", "resnet50")


COMMAND = Command(
    "train",
    help="train the original model on a dataset",
    description="Train a task model with cross-entropy and Adam (seeded), evaluate it on the "
    "test split and write DIR/model.pt (a checkpoint the other commands reload) and "
    "DIR/metrics.json (test accuracy; per-group accuracy, AGA and WGA where groups exist).",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="decoy-digits", help="dataset name (default decoy-digits)")
    p.add_argument("--data-dir", help="folder holding the data (or env LVLMVA_DATA_DIR)")
    p.add_argument("--csv", help="image-folder: CSV of path,label[,group][,mask_path][,split]")
    p.add_argument("--image-size", type=int, help="image-folder: resize images to this size")
    p.add_argument("--arch", default="mlp", choices=ARCH_CHOICES, help="model (default mlp)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and training")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder")


def metrics_json(metrics) -> dict:
    """`Metrics` as metrics.json stores them: test accuracy, and per-group accuracy, AGA and WGA
    where the data has groups (groups with no test sample are left out)."""
    out: dict = {"test_accuracy": metrics.test_accuracy}
    if metrics.group_accuracy is not None:
        out.update(group_accuracy=metrics.group_accuracy, aga=metrics.aga, wga=metrics.wga)
    return out


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from lvlmva.commands.common import check_positive_flags, dataset_options, resolve_device
    from lvlmva.vision.checkpoint import save_checkpoint
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.metrics import evaluate
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    check_positive_flags(args, "epochs", "batch_size", "lr")
    device = resolve_device(args.device)
    out = Path(args.out)

    splits = load_dataset(
        args.dataset, data_dir=args.data_dir, seed=args.seed, **dataset_options(args)
    )
    info = splits.info
    torch.manual_seed(args.seed)
    model = build_model(args.arch, info)
    history = train_classifier(
        model,
        splits.train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
    )
    if len(splits.test) == 0:
        raise ConfigError(f"the test split of {info.name} is empty: nothing to evaluate on")
    metrics = metrics_json(evaluate(model, splits.test, info, device=device))

    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_loss": history.loss,
        "train_accuracy": history.accuracy,
    }
    save_checkpoint(out / "model.pt", model, args.arch, info, extra=extra)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    groups = f", AGA {metrics['aga']:.4f}, WGA {metrics['wga']:.4f}" if "aga" in metrics else ""
    print(
        f"{info.name} {args.arch}: test accuracy {metrics['test_accuracy']:.4f}{groups} "
        f"after {args.epochs} epochs ({history.seconds:.1f} s on {device}); "
        f"wrote {out / 'model.pt'} and {out / 'metrics.json'}"
    )
    return 0
