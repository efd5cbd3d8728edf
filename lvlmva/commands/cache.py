"""`lvlmva cache stats|clear|export`: look at, empty or dump the verdict cache."""

from __future__ import annotations

import argparse
import json
import sys

from lvlmva.commands.common import Command

COMMAND = Command(
    "cache",
    help="the verdict cache: stats | clear | export",
    description="Inspect, empty or export the on-disk cache of Critic and Judge answers. "
    "stats reads without creating anything; clear asks first unless --yes (and also "
    "removes a damaged cache database).",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("stats", "clear", "export"))
    p.add_argument("path", nargs="?", help="export: the JSON-lines file to write")
    p.add_argument(
        "--cache-dir", help="cache folder (default: ~/.cache/lvlmva or LVLMVA_CACHE_DIR)"
    )
    p.add_argument("--json", action="store_true", help="stats: print one JSON object")
    p.add_argument("--yes", "-y", action="store_true", help="clear: do not ask")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lvlmva.cache import default_cache_dir

    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.action == "stats":
        return _stats(directory, as_json=args.json)
    if args.action == "clear":
        return _clear(directory, yes=args.yes)
    return _export(directory, args.path)


def _stats(directory, *, as_json: bool) -> int:
    from lvlmva.cache import directory_stats

    stats = directory_stats(directory)
    by_tag = stats.by_tag if stats is not None else {}
    sim = "simulated:"
    simulated = {t[len(sim) :]: n for t, n in by_tag.items() if t and t.startswith(sim)}
    models = {t: n for t, n in by_tag.items() if t and not t.startswith(sim)}
    untagged = by_tag.get(None, 0)
    if as_json:
        print(json.dumps({
            "directory": str(directory),
            "exists": stats is not None,
            "entries": stats.entries if stats is not None else 0,
            "size_bytes": stats.size_bytes if stats is not None else 0,
            "by_model": models,
            "simulated_by_model": simulated,
            "untagged": untagged,
        }))  # fmt: skip
        return 0
    if stats is None:
        print(f"{directory}: no cache here (0 entries)")
        return 0
    print(f"{stats.directory}: {stats.entries} entries, {_size(stats.size_bytes)}")
    for model, n in sorted(models.items()):
        print(f"  {model}: {n}")
    for model, n in sorted(simulated.items()):
        print(f"  {model}: {n} (SIMULATED answers, not a model's)")
    if untagged:
        print(f"  {untagged} entries of an earlier release (not labelled by model)")
    return 0


def _clear(directory, *, yes: bool) -> int:
    from lvlmva.cache import clear_directory, directory_stats
    from lvlmva.errors import ConfigError, DataError

    if not directory.exists():
        print(f"{directory}: no cache here, nothing to remove")
        return 0
    try:
        stats = directory_stats(directory)
        what = f"{stats.entries} entries" if stats is not None else "nothing"
    except DataError:
        what = "a damaged cache database"
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"cache clear would remove {what} from {directory}: add --yes")
        answer = input(f"Remove {what} from {directory}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    removed = clear_directory(directory)
    if removed is None:
        print(f"{directory}: removed the damaged cache database and its files")
    else:
        print(f"{directory}: removed {removed} entries")
    return 0


def _export(directory, path: str | None) -> int:
    from pathlib import Path

    from lvlmva.cache import VerdictCache
    from lvlmva.errors import ConfigError

    if not path:
        raise ConfigError("cache export needs a file to write: lvlmva cache export answers.jsonl")
    with VerdictCache(directory) as cache:
        count = cache.export(Path(path))
    print(f"wrote {count} entries to {path}")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
