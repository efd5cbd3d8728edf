"""Progress bars that stay readable when stderr is a log file rather than a terminal.

On a terminal (or in a notebook) this is tqdm as usual. Elsewhere tqdm would write every
refresh as a carriage-return frame, which a log file keeps as one ever-growing line; here each
refresh becomes one plain line instead, at most every `LOG_INTERVAL_S` seconds, so a
many-hour critique run leaves a readable trail (progress, cost, throughput) in its log.
In a log every bar also writes its final state when it closes (tqdm's `leave=False` would
clear it instead, and a bar shorter than the interval, such as one RRR epoch, would only ever
have logged its 0% line), and terminal control sequences (cursor-up) are dropped.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\x07\x08]")  # CSI sequences, CR, BEL, BS
# tqdm.auto picks the widget bar in Jupyter; that one draws itself and needs no help.
_IN_NOTEBOOK = any(cls.__name__ == "tqdm_notebook" for cls in tqdm.__mro__)


class LineWriter:
    """A file-like object for tqdm that turns each redraw into one newline-terminated line
    and drops control sequences and the blank redraws tqdm uses to clear a bar."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        line = _CONTROL.sub("", text).strip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """`tqdm(iterable, **kwargs)`, but line by line, every `LOG_INTERVAL_S` s, when its
    output (`file`, default stderr) is not a terminal and no notebook widget draws it."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not _IN_NOTEBOOK and not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.update(file=LineWriter(stream), dynamic_ncols=False, bar_format="{l_bar}{r_bar}",
                      leave=True, position=None)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)
