"""`lvlmva baseline dfr|jtt|subg`: group-robustness baselines with align's metrics.json."""

from __future__ import annotations

import argparse
import json
import time

from lvlmva.commands.common import Command, add_dataset_arguments
from lvlmva.errors import ConfigError

METHODS = ("dfr", "jtt", "subg")


COMMAND = Command(
    "baseline",
    help="group-robustness baselines: DFR, JTT, SUBG (need group labels)",
    description="Run a baseline that uses group labels and write DIR/model.pt and "
    "DIR/metrics.json ({before, after, method, params}, like align's). DFR retrains the "
    "last layer of the original model (--model) on a group-balanced half of the validation "
    "split; JTT trains, upweights the training errors and retrains; SUBG subsamples every "
    "group to the smallest and trains. Without --model the original model is trained first "
    "(DIR/original.pt) to give the 'before' metrics.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=METHODS, help="dfr | jtt | subg")
    add_dataset_arguments(p, dataset_help="dataset name (default: the model's)", needs_groups=True)
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


def run(args: argparse.Namespace) -> int:
    from lvlmva.commands.common import (
        check_writable,
        load_model_and_data,
        parse_key_values,
        resolve_device,
        train_original,
    )
    from lvlmva.vision.checkpoint import save_checkpoint

    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    grids = {
        "cs": parse_list(args.dfr_c, float, "--dfr-c"),
        "id_epochs": parse_list(args.jtt_id_epochs, int, "--jtt-id-epochs"),
        "upweights": parse_list(args.jtt_upweights, float, "--jtt-upweights"),
    }
    device = resolve_device(args.device)
    out = check_writable(args.out)
    extra = parse_key_values(args.dataset_option, "--dataset-option")
    checkpoint, splits = load_model_and_data(args, device, extra_options=extra)
    data = splits.info
    if data.group_names is None or splits.val.groups is None:
        raise ConfigError(
            f"dataset {data.name} has no group labels; baselines need groups "
            "(image-folder: add a 'group' column to the CSV)"
        )
    timings: dict[str, float] = {}
    if checkpoint is None:
        arch = args.arch
        started = time.perf_counter()
        original = train_original(
            arch, splits, epochs=args.epochs, seed=args.seed, device=device,
            progress=not args.quiet, lr=args.lr, batch_size=args.batch_size,
        )  # fmt: skip
        timings["original_train_s"] = time.perf_counter() - started
        save_checkpoint(out / "original.pt", original, arch, data)
    else:
        original, arch = checkpoint.model, checkpoint.arch
    print(f"Running {args.method.upper()} on {data.name} ({arch})", flush=True)
    result = _run_method(args, original, arch, splits, device, grids)
    timings["baseline_s"] = result.seconds
    metrics = _metrics(args, original, result, arch, splits, device, timings)
    save_checkpoint(
        out / "model.pt", result.model, arch, data,
        extra={"baseline": result.method, "params": result.params},
    )  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from lvlmva.report import write_baseline_report

    report = write_baseline_report(out / "report.html", metrics)
    print(format_table(metrics))
    print(f"Wrote {out / 'model.pt'}, {out / 'metrics.json'} and {report}")
    return 0


def _run_method(args: argparse.Namespace, original, arch: str, splits, device, grids: dict):
    """DFR on the original model, or JTT / SUBG from fresh models of `arch`."""
    from lvlmva.vision import baselines
    from lvlmva.vision.models import build_model

    train_kwargs = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": device,
        "progress": not args.quiet,
    }

    def fresh_model():
        return build_model(arch, splits.info)

    if args.method == "dfr":
        return baselines.dfr(
            original, splits, cs=grids["cs"], n_resamples=args.dfr_resamples, seed=args.seed,
            device=device,
        )  # fmt: skip
    if args.method == "jtt":
        return baselines.jtt(
            fresh_model, splits, epochs=args.epochs, id_epochs=grids["id_epochs"],
            upweights=grids["upweights"], **train_kwargs,
        )  # fmt: skip
    return baselines.subg(fresh_model, splits, epochs=args.epochs, **train_kwargs)


def _metrics(args, original, result, arch: str, splits, device, timings: dict) -> dict:
    """metrics.json: before/after on the test split, the chosen parameters, corruptions."""
    from lvlmva.vision.metrics import evaluate

    data = splits.info
    metrics = {
        "before": evaluate(original, splits.test, data, device=device).to_dict(),
        "after": evaluate(result.model, splits.test, data, device=device).to_dict(),
        "method": result.method,
        "params": result.params,
        "val_wga": result.val_wga,
        "arch": arch,
        "dataset": data.name,
        "seed": args.seed,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if result.fits:
        from lvlmva.vision.baselines import DFR_MAX_ITER

        metrics["convergence"] = {"fits": result.fits, "not_converged": result.not_converged,
                                  "max_iter": DFR_MAX_ITER}
    if args.corruptions:
        from lvlmva.vision.corruptions import corruption_accuracy

        metrics["corruptions"] = {
            "before": corruption_accuracy(original, splits.test, device=device).to_dict(),
            "after": corruption_accuracy(result.model, splits.test, device=device).to_dict(),
        }
    return metrics


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
    fits = metrics.get("convergence")
    if fits and fits["not_converged"]:
        lines.append(f"{fits['not_converged']} of {fits['fits']} logistic fits stopped at "
                     f"max_iter={fits['max_iter']} before converging")
    return "\n".join(lines)
