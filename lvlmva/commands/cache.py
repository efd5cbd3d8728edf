"""`lvlmva cache stats|clear|export`: look at, empty or dump the verdict cache."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache",
        help="the verdict cache: stats | clear | export",
        description="Inspect, empty or export the on-disk cache of Critic and Judge answers.",
    )
    p.add_argument("action", choices=("stats", "clear", "export"))
    p.add_argument("path", nargs="?", help="export: the JSON-lines file to write")
    p.add_argument(
        "--cache-dir", help="cache folder (default: ~/.cache/lvlmva or LVLMVA_CACHE_DIR)"
    )
    p.add_argument("--json", action="store_true", help="stats: print one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lvlmva.cache import VerdictCache, default_cache_dir
    from lvlmva.errors import ConfigError

    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.action == "export" and not args.path:
        raise ConfigError("cache export needs a file to write: lvlmva cache export answers.jsonl")
    with VerdictCache(directory) as cache:
        if args.action == "stats":
            stats = cache.stats()
            if args.json:
                row = asdict(stats)
                for name in ("hits", "misses", "writes"):  # per-process counters: always 0 here
                    row.pop(name)
                print(json.dumps(row))
            else:
                print(f"{stats.directory}: {stats.entries} entries, {_size(stats.size_bytes)}")
        elif args.action == "clear":
            print(f"{directory}: removed {cache.clear()} entries")
        else:
            count = cache.export(Path(args.path))
            print(f"wrote {count} entries to {args.path}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
