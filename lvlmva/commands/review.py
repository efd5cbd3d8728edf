"""`lvlmva review RUN`: a local web app to review a critique run and override its verdicts."""

from __future__ import annotations

import argparse

from lvlmva.commands.common import Command

COMMAND = Command(
    "review",
    help="review a critique run in the browser: see every explanation, override verdicts",
    description="Serve a local web app over a critique run: a filterable grid of samples, "
    "each sample's images, critique and verdicts (a click toggles a verdict; the change is "
    "saved at once with an audit entry), notes, a summary, and the export of the reviewed "
    "verdicts and masks. Binds 127.0.0.1 unless --allow-remote.",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="the critique run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (plain HTTP: prefer an SSH tunnel)",
    )
    p.add_argument("--reviewer", help="name recorded with each override (default: login name)")
    p.add_argument(
        "--no-realign",
        action="store_true",
        help="only show the re-align command; without it the app's 'Run now' runs `lvlmva align "
        "--critique RUN` in a child process (output in RUN/aligned/<time>/)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio
    import getpass

    from lvlmva.review.realign import SubprocessRealign
    from lvlmva.review.security import check_bind
    from lvlmva.review.server import serve
    from lvlmva.runs import CritiqueRun

    check_bind(args.host, args.allow_remote)  # before opening anything
    reviewer = args.reviewer
    if not reviewer:
        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):  # no login name (some containers): overrides stay unsigned
            reviewer = None
    with CritiqueRun.open(args.run) as critique_run:
        n = critique_run.count()

        def ready(url: str) -> None:
            print(f"reviewing {n} samples of {args.run} at {url} (Ctrl-C stops)", flush=True)

        try:
            asyncio.run(serve(critique_run, host=args.host, port=args.port,
                              allow_remote=args.allow_remote, reviewer=reviewer, ready=ready,
                              realign=None if args.no_realign else SubprocessRealign()))
        except KeyboardInterrupt:
            print("review stopped; every override is saved", flush=True)
    return 0
