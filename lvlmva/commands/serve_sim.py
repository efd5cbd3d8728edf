"""`lvlmva serve-sim`: the simulated LVLM behind a local OpenAI-compatible HTTP server.

A simulation, not a model: it answers Critic requests from ground-truth spurious masks with a
chosen verdict accuracy, latency and failure rates. The masks (the oracle) come from a dataset
(`--dataset NAME` or `--model CHECKPOINT`: every image's mask, keyed by the SHA-256 of the
original PNG the pipeline sends) or from a folder of `<sha256>.npy` files (`--oracle-dir`, which
`--dataset` together with `--oracle-dir` writes first).

By default the answers go out through the strict OpenAI stand-in (`lvlmva.simulation.
openai_standin`: OpenAI's request rules, model families, usage, rate limits, files and
batches; docs/openai_standin.md). `--lenient` serves the older, permissive simulation server.
"""

from __future__ import annotations

import argparse

from lvlmva.commands.common import Command


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


COMMAND = Command(
    "serve-sim",
    help="serve the simulated LVLM (not a model) on a local OpenAI-compatible endpoint",
    description="Serve a SIMULATED LVLM on an OpenAI-compatible HTTP API. It answers from "
    "ground-truth spurious masks with a chosen verdict accuracy, latency and failure rates; "
    "it is a test and benchmark stand-in, never a model. By default it sits behind a strict "
    "stand-in of the OpenAI API (chat completions, files, batches, with OpenAI's request "
    "rules, usage and rate limits; admin routes under /stand-in/ and GET /sim/stats); "
    "--lenient serves the older permissive server. See docs/openai_standin.md.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    _oracle_arguments(p)
    p.add_argument(
        "--verdict-accuracy",
        type=_probability,
        default=0.87,
        help="share of spurious clusters marked 'no' (default 0.87, GPT-4o's figure)",
    )
    p.add_argument(
        "--relevant-accuracy",
        type=_probability,
        help="share of relevant clusters marked 'yes' (default: the verdict accuracy)",
    )
    p.add_argument("--latency-ms", type=_non_negative, default=200.0, help="mean latency")
    p.add_argument("--latency-jitter-ms", type=_non_negative, default=0.0, help="uniform +- jitter")
    p.add_argument("--inject-429", type=_probability, default=0.0, help="rate of 429s")
    p.add_argument("--inject-500", type=_probability, default=0.0, help="rate of 500s")
    p.add_argument("--inject-timeout", type=_probability, default=0.0, help="rate of hangs")
    p.add_argument(
        "--inject-malformed", type=_probability, default=0.0, help="rate of malformed JSON"
    )
    p.add_argument(
        "--inject-schema-violation",
        type=_probability,
        default=0.0,
        help="rate of JSON that breaks the verdict schema",
    )
    p.add_argument(
        "--inject-wrong-colors", type=_probability, default=0.0, help="rate of wrong colour sets"
    )
    p.add_argument("--retry-after-s", type=_non_negative, default=1.0, help="Retry-After of a 429")
    p.add_argument(
        "--timeout-hang-s",
        type=_non_negative,
        default=120.0,
        help="how long an injected timeout holds the request before a 504",
    )
    p.add_argument(
        "--min-overlap",
        type=_probability,
        default=0.0,
        help="share of a cluster's pixels on the spurious mask that makes it spurious "
        "(0: one pixel)",
    )
    p.add_argument("--seed", type=int, default=0)
    _strict_arguments(p)


def _oracle_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "ground truth", "what the simulation answers from (without any: every cluster is relevant)"
    )
    group.add_argument(
        "--dataset", help="build the oracle from this dataset's spurious masks (e.g. decoy-digits)"
    )
    group.add_argument("--model", help="build it for the dataset (and options) of this checkpoint")
    group.add_argument("--data-dir", help="folder holding the data (or env LVLMVA_DATA_DIR)")
    group.add_argument("--csv", help="image-folder: CSV of path,label[,group][,mask_path][,split]")
    group.add_argument("--image-size", type=int, help="image-folder: resize images to this")
    group.add_argument(
        "--dataset-seed", type=int, default=0,
        help="seed the dataset was built with (default 0, that of `lvlmva train`)",
    )
    group.add_argument(
        "--oracle-split", choices=("train", "val", "test", "all"), default="all",
        help="splits whose images the oracle knows (default all)",
    )
    group.add_argument(
        "--oracle-dir",
        help="folder of <sha256>.npy ground-truth masks; with --dataset/--model it is written "
        "first (then reusable on its own)",
    )


def _oracle(args: argparse.Namespace):
    """The oracle of the flags: a dataset's masks (in memory, or written to --oracle-dir),
    an existing folder, or none."""
    from lvlmva.simulation import DictOracle, DirectoryOracle

    if not (args.dataset or args.model):
        return DirectoryOracle(args.oracle_dir) if args.oracle_dir else DictOracle()
    from lvlmva.commands.common import load_model_and_data
    from lvlmva.pipeline.oracle import dataset_oracle, write_dataset_oracle

    _, splits = load_model_and_data(_DataArgs(args), "cpu")
    names = ("train", "val", "test") if args.oracle_split == "all" else (args.oracle_split,)
    if args.oracle_dir:
        n = write_dataset_oracle(args.oracle_dir, splits, names)
        print(f"wrote {n} ground-truth masks of {splits.info.name} to {args.oracle_dir}",
              flush=True)
        return DirectoryOracle(args.oracle_dir)
    oracle = dataset_oracle(splits, names)
    print(f"oracle: {len(oracle)} ground-truth masks of {splits.info.name} "
          f"({', '.join(names)})", flush=True)
    return oracle


class _DataArgs(argparse.Namespace):
    """The dataset flags as `load_model_and_data` reads them (its seed is the dataset's)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(
            dataset=args.dataset, model=args.model, data_dir=args.data_dir, csv=args.csv,
            image_size=args.image_size, seed=args.dataset_seed,
        )  # fmt: skip


def _strict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lenient",
        action="store_true",
        help="serve the older permissive simulation server instead of the strict OpenAI stand-in",
    )
    p.add_argument(
        "--api-key",
        help="accept only this API key (401 otherwise); without it keys are not checked",
    )
    p.add_argument(
        "--serve-model",
        action="append",
        default=[],
        metavar="NAME",
        help="also serve NAME as a non-reasoning chat model (repeatable; simulated, "
        "simulated-critic, simulated-judge, sim-critic and sim-judge are always served)",
    )
    p.add_argument("--rpm", type=int, help="requests-per-minute limit per model (429 beyond)")
    p.add_argument("--tpm", type=int, help="tokens-per-minute limit per model (429 beyond)")
    p.add_argument(
        "--fake-clock",
        action="store_true",
        help="run on a fake clock moved only by POST /stand-in/advance (batches, rate windows)",
    )
    p.add_argument(
        "--batch-validation-s", type=_non_negative, default=1.0, help="seconds in validating"
    )
    p.add_argument(
        "--batch-lines-per-s", type=float, default=50.0, help="batch lines run per second"
    )
    p.add_argument(
        "--batch-finalizing-s", type=_non_negative, default=1.0, help="seconds in finalizing"
    )
    p.add_argument(
        "--batch-queue-tokens",
        type=int,
        default=None,
        help="each model's batch queue limit in prompt tokens (past it a batch fails with "
        "token_limit_exceeded, as at OpenAI); default: no limit",
    )


def palette() -> dict[str, tuple[int, int, int]]:
    """The cluster colours, from the vision code that draws the cluster maps."""
    from lvlmva.vision.render import PALETTE

    return dict(PALETTE)


def _simulation(args: argparse.Namespace, *, transport_faults: bool):
    """The simulated LVLM; its transport faults only when it serves HTTP itself (--lenient)."""
    from lvlmva.simulation import SimulatedLVLM

    return SimulatedLVLM(
        oracle=_oracle(args),
        palette=palette(),
        verdict_accuracy=args.verdict_accuracy,
        relevant_accuracy=args.relevant_accuracy,
        latency_ms=(args.latency_ms, args.latency_jitter_ms) if transport_faults else 0.0,
        rate_429=args.inject_429 if transport_faults else 0.0,
        rate_500=args.inject_500 if transport_faults else 0.0,
        rate_timeout=args.inject_timeout if transport_faults else 0.0,
        rate_malformed_json=args.inject_malformed,
        rate_schema_violation=args.inject_schema_violation,
        rate_wrong_colors=args.inject_wrong_colors,
        retry_after_s=args.retry_after_s,
        timeout_hang_s=args.timeout_hang_s,
        min_overlap=args.min_overlap,
        seed=args.seed,
    )


def _standin(args: argparse.Namespace, sim):
    """The strict OpenAI stand-in answering with `sim`, faults and limits from `args`."""
    from lvlmva.simulation.answerers import SimulatedAnswerer
    from lvlmva.simulation.batch_api import BatchTiming
    from lvlmva.simulation.clock import FakeClock, SystemClock
    from lvlmva.simulation.openai_chat import SIMULATED_MODELS, ChatSettings
    from lvlmva.simulation.openai_faults import Faults
    from lvlmva.simulation.openai_ratelimit import RateLimits
    from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig

    names = dict.fromkeys((*SIMULATED_MODELS, "sim-critic", "sim-judge", *args.serve_model))
    config = StandInConfig(
        require_auth=args.api_key is not None,
        api_keys={args.api_key} if args.api_key else None,
        chat=ChatSettings(custom_models=tuple(names), limits=RateLimits(args.rpm, args.tpm)),
        batch=BatchTiming(
            validation_s=args.batch_validation_s,
            lines_per_s=args.batch_lines_per_s,
            finalizing_s=args.batch_finalizing_s,
            queue_tokens=args.batch_queue_tokens,
        ),
        seed=args.seed,
    )
    faults = Faults(
        rate_429=args.inject_429,
        rate_500=args.inject_500,
        rate_timeout=args.inject_timeout,
        retry_after_s=args.retry_after_s,
        hang_s=args.timeout_hang_s,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
    )
    clock = FakeClock() if args.fake_clock else SystemClock()
    return OpenAIStandIn(SimulatedAnswerer(sim), config, clock=clock, faults=faults)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from lvlmva.simulation import start_sim_server
    from lvlmva.simulation.openai_server import start_openai_standin

    sim = _simulation(args, transport_faults=args.lenient)

    async def serve() -> None:
        if args.lenient:
            server = await start_sim_server(
                sim, host=args.host, port=args.port, allow_remote=args.allow_remote
            )
            mode = "lenient simulation server"
        else:
            server = await start_openai_standin(
                _standin(args, sim), host=args.host, port=args.port, allow_remote=args.allow_remote
            )
            mode = "strict OpenAI stand-in" + (", fake clock" if args.fake_clock else "")
        oracle_note = (
            f"oracle {args.oracle_dir or args.dataset or args.model}"
            if args.oracle_dir or args.dataset or args.model
            else "no oracle: every cluster is relevant"
        )
        print(
            f"lvlmva serve-sim: SIMULATED LVLM (answers from ground-truth masks, not a model; "
            f"verdict accuracy {sim.verdict_accuracy:g}, {oracle_note}) behind a {mode}, "
            f"listening on {server.base_url}",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    return 0
