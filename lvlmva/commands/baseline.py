"""`lvlmva baseline dfr|jtt|subg`: group-robustness baselines with align's metrics.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lvlmva.errors import ConfigError

METHODS = ("dfr", "jtt", "subg")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="group-robustness baselines: DFR, JTT, SUBG (need group labels)",
        description="Run a baseline that uses group labels and write DIR/model.pt and "
        "DIR/metrics.json ({before, after, method, params}, like align's). DFR retrains the "
        "last layer of the original model (--model) on a group-balanced half of the validation "
        "split; JTT trains, upweights the training errors and retrains; SUBG subsamples every "
        "group to the smallest and trains. Without --model the original model is trained first "
        "(DIR/original.pt) to give the 'before' metrics.",
    )
    p.add_argument("method", choices=METHODS, help="dfr | jtt | subg")
    p.add_argument("--dataset", help="dataset name (default: the model's)")
    p.add_argument("--data-dir", help="folder holding the data (or env LVLMVA_DATA_DIR)")
    p.add_argument("--csv", help="image-folder: CSV of path,label,group[,mask_path][,split]")
    p.add_argument("--image-size", type=int, help="image-folder: resize images to this size")
    p.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option, e.g. n_train=2000 (JSON values; repeatable)",
    )
    p.add_argument("--model", help="checkpoint of the original model (for DFR: the one retrained)")
    p.add_argument("--arch", default="resnet18", help="architecture (default resnet18)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (JTT, SUBG, original)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--dfr-c", default="1,0.7,0.3,0.1,0.07,0.03,0.01", help="DFR: values of C to try"
    )
    p.add_argument("--dfr-resamples", type=int, default=10, help="DFR: balanced resamples per C")
    p.add_argument("--jtt-id-epochs", default="1,2", help="JTT: identification epochs T to try")
    p.add_argument("--jtt-upweights", default="5,20", help="JTT: error-set weights to try")
    p.add_argument(
        "--corruptions",
        action="store_true",
        help="also measure the accuracy drop under gamma / defocus / contrast, before and after",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=run)


def parse_list(text: str, kind: type, flag: str) -> list:
    """'1,0.3' -> [1.0, 0.3] (or ints); ConfigError naming `flag` on bad input."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag} must be a comma-separated list of numbers, got {text!r}"
        ) from None
    if not values:
        raise ConfigError(f"{flag} names no values")
    return values


def parse_options(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict, values parsed as JSON where they parse (else kept as text)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--dataset-option must look like KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from lvlmva.commands.align import dataset_options, resolve_device
    from lvlmva.vision import baselines
    from lvlmva.vision.checkpoint import load_checkpoint, save_checkpoint
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.metrics import evaluate
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    cs = parse_list(args.dfr_c, float, "--dfr-c")
    id_epochs = parse_list(args.jtt_id_epochs, int, "--jtt-id-epochs")
    upweights = parse_list(args.jtt_upweights, float, "--jtt-upweights")
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.model:
        checkpoint = load_checkpoint(args.model, map_location=device)
        original, arch, info = checkpoint.model, checkpoint.arch, checkpoint.info
        name = args.dataset or info.name
        options = dict(info.options) if name == info.name else {}
    else:
        original = info = None
        arch, name, options = args.arch, args.dataset, {}
        if name is None:
            raise ConfigError("give --dataset NAME (or --model PATH of a trained model)")
    options.update(dataset_options(args))
    options.update(parse_options(args.dataset_option))
    seed = options.pop("seed", args.seed)
    splits = load_dataset(name, data_dir=args.data_dir, seed=seed, **options)
    data = splits.info
    if data.group_names is None or splits.val.groups is None:
        raise ConfigError(
            f"dataset {data.name} has no group labels; baselines need groups "
            "(image-folder: add a 'group' column to the CSV)"
        )
    if info is not None and (info.class_names, info.channels, info.image_size) != (
        data.class_names,
        data.channels,
        data.image_size,
    ):
        raise ConfigError(
            f"model {args.model} was trained on {info.name} ({info.channels}x{info.image_size}px, "
            f"{info.num_classes} classes) and does not fit dataset {data.name}"
        )

    timings: dict[str, float] = {}
    train_kwargs = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device,
        "progress": not args.quiet,
    }

    def fresh_model() -> torch.nn.Module:
        return build_model(arch, data)

    if original is None:
        print(f"Training the original {arch} on {data.name} for {args.epochs} epochs", flush=True)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            original = fresh_model()
        train_classifier(original, splits.train, epochs=args.epochs, **train_kwargs)
        timings["original_train_s"] = time.perf_counter() - started
        save_checkpoint(out / "original.pt", original, arch, data)

    print(f"Running {args.method.upper()} on {data.name} ({arch})", flush=True)
    if args.method == "dfr":
        result = baselines.dfr(
            original, splits, cs=cs, n_resamples=args.dfr_resamples, seed=args.seed, device=device
        )
    elif args.method == "jtt":
        result = baselines.jtt(
            fresh_model,
            splits,
            epochs=args.epochs,
            id_epochs=id_epochs,
            upweights=upweights,
            **train_kwargs,
        )
    else:
        result = baselines.subg(fresh_model, splits, epochs=args.epochs, **train_kwargs)
    timings["baseline_s"] = result.seconds

    before = evaluate(original, splits.test, data, device=device)
    after = evaluate(result.model, splits.test, data, device=device)
    metrics = {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "method": result.method,
        "params": result.params,
        "val_wga": result.val_wga,
        "arch": arch,
        "dataset": data.name,
        "seed": args.seed,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if args.corruptions:
        from lvlmva.vision.corruptions import corruption_accuracy

        metrics["corruptions"] = {
            "before": corruption_accuracy(original, splits.test, device=device).to_dict(),
            "after": corruption_accuracy(result.model, splits.test, device=device).to_dict(),
        }
    save_checkpoint(
        out / "model.pt",
        result.model,
        arch,
        data,
        extra={"baseline": result.method, "params": result.params},
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics))
    print(f"Wrote {out / 'model.pt'} and {out / 'metrics.json'}")
    return 0


def format_table(metrics: dict) -> str:
    """Before/after test accuracy, AGA and WGA, and the chosen hyper-parameters."""
    before, after = metrics["before"], metrics["after"]
    lines = [f"{'':26}{'original':>10}{metrics['method']:>10}"]
    for label, key in (
        ("test accuracy", "test_accuracy"),
        ("average group accuracy", "aga"),
        ("worst group accuracy", "wga"),
    ):
        if before.get(key) is not None:
            lines.append(f"{label:26}{before[key]:>10.4f}{after[key]:>10.4f}")
    params = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics["params"].items()
    )
    lines.append(f"chosen: {params}")
    return "\n".join(lines)
