"""What several commands share: dataset and critic flags, the device, loading a checkpoint with
the data it fits, and training the original model. Heavy imports stay inside the functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from lvlmva.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Command:
    """What `lvlmva.cli` needs to create a subcommand's parser: the name typed on the command
    line, the one-line help `lvlmva --help` lists, and the description `lvlmva NAME --help`
    opens with."""

    name: str
    help: str
    description: str


def add_dataset_arguments(
    parser: argparse.ArgumentParser,
    *,
    dataset_help: str,
    image_folder: bool = True,
    needs_groups: bool = False,
) -> None:
    """--dataset, --data-dir and (for the image-folder dataset) --csv and --image-size;
    `needs_groups`: the command needs the CSV's group column."""
    parser.add_argument("--dataset", help=dataset_help)
    parser.add_argument("--data-dir", help="folder holding the data (or env LVLMVA_DATA_DIR)")
    if image_folder:
        group = ",group" if needs_groups else "[,group]"
        parser.add_argument(
            "--csv", help=f"image-folder: CSV of path,label{group}[,mask_path][,split]"
        )
        parser.add_argument(
            "--image-size", type=int, help="image-folder: resize images to this size"
        )


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset keyword options given on the command line."""
    options: dict[str, Any] = {}
    if getattr(args, "csv", None):
        options["csv"] = args.csv
    if getattr(args, "image_size", None):
        options["image_size"] = args.image_size
    return options


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings -> dict, values parsed as JSON where they parse (else kept as text)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} must look like KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def resolve_device(name: str) -> Any:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1` ... as a torch device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device torch knows") from exc


def load_model_and_data(
    args: argparse.Namespace,
    device: Any,
    *,
    default_dataset: str | None = None,
    extra_options: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """`(checkpoint or None, splits)`: the checkpoint of `--model` (if given) and the dataset
    it was trained on (or `--dataset`, which must fit the model: classes, channels, size)."""
    from lvlmva.vision.checkpoint import load_checkpoint
    from lvlmva.vision.datasets import load_dataset

    checkpoint = None
    options: dict[str, Any] = {}
    name = args.dataset
    if getattr(args, "model", None):
        checkpoint = load_checkpoint(args.model, map_location=device)
        info = checkpoint.info
        name = name or info.name
        if name == info.name:
            options = dict(info.options)
    name = name or default_dataset
    if name is None:
        raise ConfigError("give --dataset NAME (or --model PATH of a trained model)")
    options.update(dataset_options(args))
    options.update(extra_options or {})
    seed = options.pop("seed", args.seed)
    splits = load_dataset(name, data_dir=args.data_dir, seed=seed, **options)
    if checkpoint is not None:
        check_model_fits(checkpoint.info, splits.info, args.model)
    return checkpoint, splits


def check_model_fits(trained_on: Any, data: Any, model_path: str) -> None:
    """ConfigError when a model trained on `trained_on` cannot take the images of `data`."""
    if (trained_on.class_names, trained_on.channels, trained_on.image_size) != (
        data.class_names,
        data.channels,
        data.image_size,
    ):
        raise ConfigError(
            f"model {model_path} was trained on {trained_on.name} ({trained_on.channels}x"
            f"{trained_on.image_size}px, {trained_on.num_classes} classes) and does not fit "
            f"dataset {data.name} ({data.channels}x{data.image_size}px, {data.num_classes} "
            "classes)"
        )


def train_original(
    arch: str, splits: Any, *, epochs: int, seed: int, device: Any, progress: bool, **kwargs: Any
) -> Any:
    """The original model: `arch` built from weights drawn under `seed` (whatever the global
    random state) and trained normally on the training split."""
    from lvlmva.vision.models import build_model
    from lvlmva.vision.seeding import seeded
    from lvlmva.vision.training import train_classifier

    with seeded(seed):
        model = build_model(arch, splits.info)
    print(f"Training the original {arch} on {splits.info.name} for {epochs} epochs", flush=True)
    train_classifier(
        model, splits.train, epochs=epochs, seed=seed, device=device, progress=progress, **kwargs
    )
    return model


def check_writable(out: str | Path) -> Path:
    """The output folder, created; ConfigError naming it when it cannot be written."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lvlmva-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {path}: {exc.strerror or exc}") from None
    return path


# -- critic flags, from the registry ---------------------------------------------------------


_LIMIT_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--rpm", {"type": float, "help": "requests-per-minute cap"}),
    ("--tpm", {"type": float, "help": "tokens-per-minute cap"}),
    ("--max-in-flight", {"type": int, "default": 32, "help": "requests in flight at most"}),
    ("--budget-usd", {"type": float, "help": "spend at most this: each call is sent only when its "
     "worst case (prompt and --max-tokens) fits what is left"}),
    ("--request-timeout", {"type": float, "default": None,
                           "help": "seconds one request may take (default 600 for reasoning "
                           "models, which think before answering, else 60)"}),
    ("--max-response-mb", {"type": float, "default": 4.0,
                           "help": "refuse a response body larger than this (default 4 MiB)"}),
)  # fmt: skip
"""The `EngineLimits` flags of the critic group."""


def add_critic_arguments(parser: argparse.ArgumentParser) -> None:
    """`--critic` with the registry's kinds, the flags every LVLM critic shares, and each
    backend's own options (a flag two backends share is added once)."""
    from lvlmva.critics import CRITICS

    group = parser.add_argument_group("critic")
    kinds = " | ".join(CRITICS)
    group.add_argument(
        "--critic",
        choices=tuple(CRITICS),
        help=f"{kinds} (default: openai when OPENAI_API_KEY or --base-url is set, else "
        "simulated): "
        + "; ".join(f"{name}: {backend.summary}" for name, backend in CRITICS.items()),
    )
    group.add_argument("--critic-model", help="LVLM for the Critic (e.g. gpt-4o)")
    group.add_argument("--judge-model", help="LLM for the Judge (default: the critic model)")
    group.add_argument("--fused", action="store_true", help="one structured-output call per sample")
    add_request_arguments(group)
    for flag, kwargs in _LIMIT_FLAGS:
        group.add_argument(flag, **kwargs)
    group.add_argument(
        "--prices",
        help="price table file (JSON/YAML/TOML: {model: {input, output[, cached_input]}} in "
        "USD per 1M tokens) to use instead of the list prices",
    )
    group.add_argument(
        "--cache-dir", help="answer cache (default: ~/.cache/lvlmva or LVLMVA_CACHE_DIR)"
    )
    group.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    _add_batch_arguments(group)
    added: set[str] = set()
    for backend in CRITICS.values():
        for option in backend.cli_options:
            if option.flags[0] not in added:
                added.add(option.flags[0])
                option.add_to(group)


def _add_batch_arguments(group: argparse._ArgumentGroup) -> None:
    """--batch and its settings (docs/batch.md)."""
    group.add_argument(
        "--batch",
        nargs="?",
        const="api",
        choices=("api", "files"),
        help="send the Critic & Judge requests in batches at half price: through the OpenAI "
        "Batch API (--batch, resumable: rerun the same command), or into batch files for "
        "vllm run-batch (--batch files; see lvlmva batch export)",
    )
    group.add_argument(
        "--batch-jobs", type=int, default=10_000, help="batch: jobs held at once (default 10000)"
    )
    group.add_argument(
        "--batch-reasks",
        choices=("sync", "batch"),
        default="sync",
        help="batch: ask again for invalid Judge answers synchronously (default) or in the "
        "next batch",
    )
    group.add_argument(
        "--batch-poll-s", type=float, default=5.0, help="batch: first wait between polls"
    )
    group.add_argument(
        "--batch-queue-tokens",
        type=int,
        default=None,
        help="batch: the models' batch queue limit (enqueued prompt tokens, from the API's "
        "limits page): shards are cut to it and sent only while there is room (default: "
        "learned from token_limit_exceeded refusals)",
    )


def _batch_options(args: argparse.Namespace, kind: str) -> Any:
    if not getattr(args, "batch", None):
        return None
    from lvlmva.engine.batch.options import BatchOptions

    if kind != "openai":
        raise ConfigError(f"--batch needs --critic openai (an OpenAI-compatible API), not {kind}")
    if args.no_cache:
        raise ConfigError("--batch keeps its manifest and answers in the cache: drop --no-cache")
    return BatchOptions(
        mode=args.batch, max_jobs=args.batch_jobs, reasks=args.batch_reasks,
        poll_s=args.batch_poll_s, queue_tokens=args.batch_queue_tokens,
    )  # fmt: skip


_REQUEST_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--max-completion-tokens", {"type": int, "help": "output budget of each call, reasoning "
     "included (default: 1024 for chat models, 4096 for reasoning models such as gpt-5 and the "
     "o-series)"}),
    ("--reasoning-effort", {"help": "reasoning models: reasoning_effort for the Critic and the "
     "Judge (e.g. minimal, low, medium, high; default: the model's)"}),
    ("--judge-reasoning-effort", {"help": "reasoning models: the Judge's reasoning_effort"}),
    ("--temperature", {"default": "0", "help": "sampling temperature, sent where the model "
     "takes one (default 0; none: never sent, for a server that refuses it)"}),
    ("--verdict-logprobs", {"type": int, "metavar": "N", "help": "ask for token "
     "log-probabilities with N alternatives (e.g. 5), where the model gives them (not "
     "reasoning models): each verdict's P(\"no\"), read at the Critic's verdict line (else "
     "the Judge's or fused verdict), then stands for its 0 / 1 in the neighbour consensus "
     "and, with --confidence-weights, the mask weights (no extra tokens; default: not asked)"}),
)  # fmt: skip
"""The `RequestSettings` flags but --detail (see `add_detail_argument`)."""


def add_request_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags of what each request asks for (`lvlmva.critics.RequestSettings`)."""
    for flag, kwargs in _REQUEST_FLAGS:
        parser.add_argument(flag, **kwargs)
    add_detail_argument(parser)


def add_detail_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--detail`, the image detail policy (`lvlmva.engine.model_params.DETAILS`)."""
    from lvlmva.engine.model_params import DETAILS

    parser.add_argument(
        "--detail", choices=DETAILS, default="fit",
        help="image detail: fit (default: low for images of at most 512 px, which then lose "
        "no pixel for a third of the image tokens; high for larger ones), auto, low or high",
    )  # fmt: skip


def check_positive_flags(args: argparse.Namespace, *names: str) -> None:
    """ConfigError naming the first of the flags `names` (dest names) whose value is 0 or
    less; checked before any training or paid call."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be positive, got {value:g}")


T = TypeVar("T")


def from_flags(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """The dataclass `cls` with each field read from the flag of the same dest name, but those
    given in `values` (a field with neither is a programming error: AttributeError)."""
    read = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in values}
    return cls(**read, **values)


def critic_settings(args: argparse.Namespace) -> Any:
    """The `CriticSettings` of the parsed flags and the environment (keys stay in the
    environment: they are read by the providers and never copied into settings)."""
    from lvlmva.cache import default_cache_dir
    from lvlmva.critics import CriticSettings, EngineLimits, RequestSettings, get_critic

    check_positive_flags(
        args, "rpm", "tpm", "max_in_flight", "budget_usd", "request_timeout", "max_response_mb",
        "max_completion_tokens",
    )  # fmt: skip

    kind = args.critic or (
        "openai" if (os.environ.get("OPENAI_API_KEY") or getattr(args, "base_url", None))
        else "simulated"
    )  # fmt: skip
    backend = get_critic(kind)
    settings = CriticSettings(
        kind,
        fused=args.fused,
        cache_dir=None if args.no_cache else Path(args.cache_dir or default_cache_dir()),
        prices_file=args.prices,
        seed=args.seed,
        limits=from_flags(EngineLimits, args, max_response_bytes=int(args.max_response_mb * 2**20)),
        request=RequestSettings(
            max_completion_tokens=args.max_completion_tokens,
            reasoning_effort=args.reasoning_effort,
            judge_reasoning_effort=args.judge_reasoning_effort,
            image_detail=args.detail,
            temperature=_temperature(args.temperature),
            verdict_logprobs=args.verdict_logprobs,
        ),
        batch=_batch_options(args, kind),
    )
    settings = backend.configure(settings, args)
    _check_efforts(settings)
    return settings


def _temperature(flag: str) -> float | None:
    """The value of `--temperature`: a number from 0 to 2, or None for "none" (not sent)."""
    if flag.strip().lower() == "none":
        return None
    try:
        value = float(flag)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 2.0:
        raise ConfigError(f"--temperature must be a number from 0 to 2 or none, got {flag!r}")
    return value


def _check_efforts(settings: Any) -> None:
    """The reasoning efforts asked for, against what each model takes (ConfigError now, not
    a 400 on every request later)."""
    from lvlmva.engine.model_params import check_efforts

    request = settings.request
    check_efforts(
        settings.critic_model, settings.judge_model, request.reasoning_effort,
        request.judge_reasoning_effort,
    )  # fmt: skip


# -- robust verdicts and the model check (lvlmva.pipeline.masking, .selection) -----------------


_ROBUST_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--votes", {"type": int, "default": 1, "help": "Critic samples per image, colours listed in "
     "another order each time; a vote per cluster (default 1; each vote costs one Critic and "
     "one Judge call)"}),
    ("--neighbours", {"type": int, "default": 10, "help": "pool each verdict with those of the N "
     "most similar clusters of other images (default 10; 0 = off; no LVLM call)"}),
    ("--neighbour-kernel", {"choices": ("uniform", "gaussian"), "default": "uniform",
     "help": "each neighbour counts fully (uniform, default) or as far as it is alike "
     "(gaussian, median-heuristic bandwidth)"}),
    ("--confidence-weights", {"nargs": "?", "const": "on", "default": "off",
     "choices": ("on", "off", "auto"), "help": "mask weights from the verdicts' agreement "
     "instead of 0/1 (on; the bare flag), or only while the neighbours overturn at most a "
     "quarter of the verdicts (auto); default off"}),
    ("--val-samples", {"type": int, "help": "validation images critiqued for the model check "
     "when the validation split has no usable groups (default: max(100, n-align / 4))"}),
    ("--val-masks", {"choices": ("critique", "neighbours"), "default": "critique",
     "help": "masks of those validation images: from the critic (default; 2 LVLM calls each) "
     "or from the nearest critiqued clusters of the alignment samples (no call)"}),
    ("--keep-aligned", {"action": "store_true", "help": "return the aligned model even when it "
     "is worse than the original on validation"}),
)  # fmt: skip


def add_robust_arguments(parser: argparse.ArgumentParser) -> None:
    """--votes, --neighbours, --neighbour-kernel, --confidence-weights, --val-samples,
    --val-masks and --keep-aligned."""
    group = parser.add_argument_group("robust verdicts and the model check (docs/robust.md)")
    for flag, kwargs in _ROBUST_FLAGS:
        group.add_argument(flag, **kwargs)


def robust_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `CritiqueOptions` fields of the robust-verdict flags."""
    return {
        "votes": args.votes,
        "neighbours": args.neighbours,
        "neighbour_kernel": args.neighbour_kernel,
        "confidence": {"on": True, "off": False}.get(args.confidence_weights, "auto"),
        "val_samples": args.val_samples,
        "val_masks": args.val_masks,
    }
