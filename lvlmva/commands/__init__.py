"""One module per `lvlmva` subcommand. Each declares `COMMAND` (a `common.Command`: name, help,
description) and defines `add_arguments(parser)` and `run(args) -> int`; `lvlmva.cli` creates the
parser from `COMMAND`, fills it with `add_arguments` and sets `handler=run`. Imports of heavy
libraries happen inside `run`."""

COMMANDS = (
    "train", "explain", "critique", "align", "baseline", "estimate", "cache", "serve_sim",
    "review", "batch",
)
