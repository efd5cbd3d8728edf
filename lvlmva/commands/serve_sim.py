"""`lvlmva serve-sim`: the simulated LVLM behind a local OpenAI-compatible HTTP server.

A simulation, not a model: it answers Critic requests from ground-truth spurious masks (an
oracle folder of `<sha256 of the original PNG>.npy` files, see
`lvlmva.simulation.write_oracle`) with a chosen verdict accuracy, latency and failure rates.
"""

from __future__ import annotations

import argparse


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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve-sim",
        help="serve the simulated LVLM (not a model) on a local OpenAI-compatible endpoint",
        description="Serve a SIMULATED LVLM on an OpenAI-compatible HTTP API "
        "(POST /v1/chat/completions, GET /v1/models, GET /sim/stats, POST /sim/reset). It "
        "answers from ground-truth spurious masks with a chosen verdict accuracy, latency and "
        "failure rates; it is a test and benchmark stand-in, never a model.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    p.add_argument(
        "--oracle-dir",
        help="folder of <sha256>.npy ground-truth masks (without it every cluster is relevant)",
    )
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
    p.set_defaults(handler=run)


def palette() -> dict[str, tuple[int, int, int]]:
    """The cluster colours, from the vision code that draws the cluster maps."""
    from lvlmva.vision.render import PALETTE

    return dict(PALETTE)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from lvlmva.simulation import DictOracle, DirectoryOracle, SimulatedLVLM, start_sim_server

    oracle = DirectoryOracle(args.oracle_dir) if args.oracle_dir else DictOracle()
    sim = SimulatedLVLM(
        oracle=oracle,
        palette=palette(),
        verdict_accuracy=args.verdict_accuracy,
        relevant_accuracy=args.relevant_accuracy,
        latency_ms=(args.latency_ms, args.latency_jitter_ms),
        rate_429=args.inject_429,
        rate_500=args.inject_500,
        rate_timeout=args.inject_timeout,
        rate_malformed_json=args.inject_malformed,
        rate_schema_violation=args.inject_schema_violation,
        rate_wrong_colors=args.inject_wrong_colors,
        retry_after_s=args.retry_after_s,
        timeout_hang_s=args.timeout_hang_s,
        min_overlap=args.min_overlap,
        seed=args.seed,
    )

    async def serve() -> None:
        server = await start_sim_server(
            sim, host=args.host, port=args.port, allow_remote=args.allow_remote
        )
        oracle_note = f"oracle {args.oracle_dir}" if args.oracle_dir else "no oracle"
        print(
            f"lvlmva serve-sim: SIMULATED LVLM (answers from ground-truth masks, not a model; "
            f"verdict accuracy {sim.verdict_accuracy:g}, {oracle_note}) listening on "
            f"{server.base_url}",
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
