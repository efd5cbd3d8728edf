"""Progress bars in log files: plain lines, no carriage-return frames."""

from __future__ import annotations

import io

from lvlmva.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_plain_line_per_refresh():
    log = io.StringIO()
    for _ in progress_bar(range(4), desc="critique", file=log, mininterval=0):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("critique:   0%")
    assert lines[-1].startswith("critique: 100%") and "4/4" in lines[-1]


def test_a_cleared_bar_leaves_no_blank_lines():
    log = io.StringIO()
    for _ in progress_bar(range(2), desc="epoch", file=log, leave=False, mininterval=0):
        pass
    assert all(line.strip() for line in log.getvalue().splitlines())


def test_a_log_file_is_refreshed_at_most_every_log_interval():
    log = io.StringIO()
    for _ in progress_bar(range(1000), desc="train", file=log):
        pass
    assert len(log.getvalue().splitlines()) == 2  # the start and the close, not 1,000 frames


def test_a_terminal_keeps_tqdm_frames():
    term = _Terminal()
    for _ in progress_bar(range(3), desc="x", file=term, mininterval=0):
        pass
    assert "\r" in term.getvalue()


def test_a_bar_that_clears_itself_still_logs_its_end_and_no_escape_codes():
    log = io.StringIO()
    for _ in progress_bar(range(85), desc="RRR epoch 1/5", file=log, leave=False):
        pass  # shorter than the log interval: only the start would be written otherwise
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("RRR epoch 1/5: 100%") and "85/85" in lines[-1]
    assert "\x1b" not in log.getvalue()


def test_control_sequences_are_dropped_from_log_lines():
    from lvlmva.progress import LineWriter

    log = io.StringIO()
    writer = LineWriter(log)
    writer.write("\x1b[A")  # tqdm's cursor-up, on its own
    writer.write("\rcritique:  50%| 5/10 \x1b[A")
    assert log.getvalue() == "critique:  50%| 5/10\n"
