"""One module per `lvlmva` subcommand. Each exposes `register(subparsers)`, which adds its
parser and sets `handler=run` (imports of heavy libraries happen inside `run`)."""

COMMANDS = (
    "train", "explain", "critique", "align", "baseline", "estimate", "cache", "serve_sim",
    "review", "batch",
)
