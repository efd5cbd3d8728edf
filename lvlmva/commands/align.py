"""`lvlmva align`: explain, critique with an LVLM (or the simulation), mask, retrain, report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lvlmva.errors import ConfigError

CRITICS = ("simulated", "openai", "litellm", "ground-truth")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align",
        help="align a model with an LVLM critic (the main job)",
        description="Explain a model's decisions on training samples, let an LVLM Critic & "
        "Judge mark spurious clusters, and retrain with the right-for-the-right-reasons penalty. "
        "With no API configured the offline simulated LVLM is used, and the output says so.",
    )
    p.add_argument("--dataset", help="dataset name (default: the model's, else decoy-digits)")
    p.add_argument("--data-dir", help="folder holding the data (or env LVLMVA_DATA_DIR)")
    p.add_argument("--csv", help="image-folder: CSV of path,label[,group][,mask_path][,split]")
    p.add_argument("--image-size", type=int, help="image-folder: resize images to this size")
    p.add_argument("--model", help="checkpoint to align (default: train the original model first)")
    p.add_argument("--arch", default="mlp", help="architecture when training the original model")
    p.add_argument("--train-epochs", type=int, default=5, help="epochs for the original model")
    p.add_argument("--spec", help="task spec file or built-in name (default: the dataset's task)")
    p.add_argument(
        "--critic",
        choices=CRITICS,
        help="simulated | openai | litellm | ground-truth (default: openai when "
        "OPENAI_API_KEY or --base-url is set, else simulated)",
    )
    p.add_argument("--critic-model", help="LVLM for the Critic (e.g. gpt-4o)")
    p.add_argument("--judge-model", help="LLM for the Judge (default: the critic model)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp ...)")
    p.add_argument("--fused", action="store_true", help="one structured-output call per sample")
    p.add_argument(
        "--verdict-accuracy",
        type=float,
        default=0.87,
        help="simulated critic: share of correct verdicts (default 0.87, GPT-4o's)",
    )
    p.add_argument(
        "--sim-latency-ms", type=float, default=0.0, help="simulated critic: latency per request"
    )
    p.add_argument(
        "--sim-http",
        action="store_true",
        help="simulated critic: serve it on loopback and use the real HTTP path",
    )
    p.add_argument("--n-align", type=int, default=1000, help="alignment samples to critique")
    p.add_argument("--clusters", type=int, default=7, help="PPEPS-WGM clusters per image")
    p.add_argument("--method", default="deeplift-shap", help="attribution method")
    p.add_argument(
        "--masks",
        choices=("soft", "hard"),
        default="soft",
        help="soft (default): pixels weighted by the posterior responsibility of the rejected "
        "clusters; hard: 0/1, the union of the rejected clusters",
    )
    p.add_argument("--lambda", dest="lam", type=float, help="RRR weight (default: per task)")
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
    p.add_argument("--rpm", type=float, help="requests-per-minute cap")
    p.add_argument("--tpm", type=float, help="tokens-per-minute cap")
    p.add_argument("--max-in-flight", type=int, default=32)
    p.add_argument("--budget-usd", type=float, help="stop issuing requests past this cost")
    p.add_argument("--prices", help="price table file (JSON/YAML/TOML)")
    p.add_argument(
        "--cache-dir", help="verdict cache (default: ~/.cache/lvlmva or LVLMVA_CACHE_DIR)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--report-samples", type=int, default=12, help="samples shown in report.html")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=run)


def critic_settings(args: argparse.Namespace):
    """Build the CriticSettings from flags and the environment (the key is never printed)."""
    from lvlmva.api import SIMULATED_CRITIC_MODEL, SIMULATED_JUDGE_MODEL, CriticSettings
    from lvlmva.cache import default_cache_dir

    api_key = os.environ.get("OPENAI_API_KEY")
    kind = args.critic or ("openai" if (api_key or args.base_url) else "simulated")
    if kind in ("openai", "litellm"):
        if not args.critic_model:
            raise ConfigError(f"--critic {kind} needs --critic-model (e.g. gpt-4o)")
        if kind == "openai" and not (api_key or args.base_url):
            raise ConfigError("--critic openai needs OPENAI_API_KEY or --base-url")
        critic_model = args.critic_model
        judge_model = args.judge_model or args.critic_model
    else:
        critic_model, judge_model = SIMULATED_CRITIC_MODEL, SIMULATED_JUDGE_MODEL
    if not 0.0 <= args.verdict_accuracy <= 1.0:
        raise ConfigError(f"--verdict-accuracy must be in [0, 1], got {args.verdict_accuracy}")
    cache_dir = None if args.no_cache else Path(args.cache_dir or default_cache_dir())
    return CriticSettings(
        kind=kind,
        critic_model=critic_model,
        judge_model=judge_model,
        base_url=args.base_url,
        api_key=api_key or ("unused" if args.base_url else None),
        fused=args.fused,
        verdict_accuracy=args.verdict_accuracy,
        sim_latency_ms=args.sim_latency_ms,
        sim_transport="http" if args.sim_http else "in-process",
        rpm=args.rpm,
        tpm=args.tpm,
        max_in_flight=args.max_in_flight,
        budget_usd=args.budget_usd,
        cache_dir=cache_dir,
        prices_file=args.prices,
        seed=args.seed,
    )


def describe_critic(critic) -> str:
    if critic.kind == "simulated":
        return (
            f"Critic: SIMULATED LVLM (offline simulation answering from ground-truth masks with "
            f"verdict accuracy {critic.verdict_accuracy:.2f}; not a real model)"
        )
    if critic.kind == "ground-truth":
        return "Critic: none (ground-truth spurious masks used as correction masks: upper bound)"
    where = critic.base_url or "api.openai.com"
    return (
        f"Critic: {critic.critic_model} / Judge: {critic.judge_model} via {critic.kind} ({where})"
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import torch

    from lvlmva.api import align, preflight, resolve_spec
    from lvlmva.report import write_align_report
    from lvlmva.vision.checkpoint import load_checkpoint, save_checkpoint
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    critic = critic_settings(args)
    print(describe_critic(critic), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)

    if args.model:
        checkpoint = load_checkpoint(args.model, map_location=device)
        model, arch, info = checkpoint.model, checkpoint.arch, checkpoint.info
        name = args.dataset or info.name
        options = dict(info.options) if name == info.name else {}
    else:
        model = arch = info = None
        name, options = args.dataset or "decoy-digits", {}
    options.update(dataset_options(args))
    seed = options.pop("seed", args.seed)
    splits = load_dataset(name, data_dir=args.data_dir, seed=seed, **options)
    if info is not None and (info.class_names, info.channels, info.image_size) != (
        splits.info.class_names,
        splits.info.channels,
        splits.info.image_size,
    ):
        raise ConfigError(
            f"model {args.model} was trained on {info.name} ({info.channels}x{info.image_size}px, "
            f"{info.num_classes} classes) and does not fit dataset {splits.info.name}"
        )
    # Everything that can be checked is checked before any training or LVLM call.
    spec = None if critic.kind == "ground-truth" else resolve_spec(args.spec, splits)
    if critic.kind in ("openai", "litellm"):
        asyncio.run(preflight(critic))
    if model is None:
        arch = args.arch
        with torch.random.fork_rng(devices=[]):  # the same original model for the same seed
            torch.manual_seed(args.seed)
            model = build_model(arch, splits.info)
        print(f"Training the original {arch} on {name} for {args.train_epochs} epochs", flush=True)
        train_classifier(
            model,
            splits.train,
            epochs=args.train_epochs,
            seed=args.seed,
            device=device,
            progress=not args.quiet,
        )
        save_checkpoint(out / "original.pt", model, arch, splits.info)

    result = asyncio.run(
        align(
            model,
            splits,
            spec,
            critic=critic,
            n_align=args.n_align,
            n_clusters=args.clusters,
            attribution=args.method,
            soft_masks=args.masks == "soft",
            lam=args.lam,
            start=args.start,
            epochs=args.epochs,
            lr=args.lr,
            streaming=not args.no_streaming,
            seed=args.seed,
            device=device,
            progress=not args.quiet,
        )
    )
    save_checkpoint(
        out / "model.pt",
        result.model,
        arch,
        splits.info,
        extra={"aligned": True, "lambda": result.lam, "critic": critic.kind},
    )
    metrics = result.metrics_dict()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = write_align_report(
        out / "report.html",
        result,
        splits,
        original_model=model,
        n_samples=args.report_samples,
        device=device,
    )
    print(format_before_after(metrics))
    print(f"Wrote {out / 'model.pt'}, {out / 'metrics.json'} and {report}")
    return 0


def dataset_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "csv", None):
        options["csv"] = args.csv
    if getattr(args, "image_size", None):
        options["image_size"] = args.image_size
    return options


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device torch knows") from exc


def format_before_after(metrics: dict) -> str:
    """A before/after table of the headline metrics."""
    before, after = metrics["before"], metrics["after"]
    rows = [("test accuracy", "test_accuracy")]
    if before.get("aga") is not None:
        rows += [("average group accuracy", "aga"), ("worst group accuracy", "wga")]
    lines = [f"{'':26}{'before':>10}{'after':>10}"]
    for label, key in rows:
        lines.append(f"{label:26}{before[key]:>10.4f}{after[key]:>10.4f}")
    verdict = (metrics.get("verdict_accuracy") or {}).get("accuracy")
    if verdict is not None:
        lines.append(f"{'verdict accuracy':26}{'':>10}{verdict:>10.4f}")
    lines.append(
        f"LVLM calls {metrics['provider_calls']}, cache hits {metrics['cache_hits']}, "
        f"cost ${metrics['cost_usd']:.4f}, failed {metrics['failed_jobs']}, "
        f"masks {metrics['n_masks']}/{metrics['n_align']}"
    )
    return "\n".join(lines)
