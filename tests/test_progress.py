"""progress_bar: tqdm on a terminal; elsewhere a bounded number of plain lines with counts and rates."""

from __future__ import annotations

import io
import os
import re
import time

from tqdm import tqdm

from cdml_spark.progress import LogProgress, progress_bar

LINE = re.compile(
    r"epoch 1/2: (?P<n>[\d,]+)/5,000,000 triplets \(\d+%\), (?P<rate>[\d,]+) triplets/s, "
    r"eta [\d:]+, loss 0\.\d{4}"
)


def test_a_terminal_gets_a_tqdm_bar():
    leader, follower = os.openpty()  # a real pseudo-terminal: isatty() is true
    with os.fdopen(follower, "w") as terminal:
        bar = progress_bar("epoch 1/2", "triplet", 100, stream=terminal)
        assert isinstance(bar, tqdm)
        bar.close()
    os.close(leader)
    assert isinstance(progress_bar("epoch 1/2", "triplet", 100, stream=io.StringIO()), LogProgress)


def test_a_log_gets_one_line_per_interval_with_counts_and_rates():
    log = io.StringIO()
    bar = progress_bar("epoch 1/2", "triplet", 5_000_000, stream=log, interval=0.05)
    began = time.monotonic()
    for step in range(40):
        bar.update(1024)
        bar.set_postfix(loss=f"{0.2 - step / 1000:.4f}")
        time.sleep(0.01)
    bar.close()
    elapsed = time.monotonic() - began
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= elapsed / 0.05, (elapsed, lines)
    counts = []
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        counts.append(int(match["n"].replace(",", "")))
        assert int(match["rate"].replace(",", "")) > 0
    assert counts == sorted(counts) and all(n % 1024 == 0 for n in counts)


def test_a_fast_loop_logs_nothing_and_a_disabled_bar_never_does():
    log = io.StringIO()
    bar = progress_bar("epoch 1/2", "triplet", stream=log)  # 30 s interval
    for _ in range(10_000):
        bar.update(8)
        bar.set_postfix(loss="0.1000")
    bar.close()
    assert log.getvalue() == ""  # no tqdm redraw fragments
    quiet = progress_bar("epoch 1/2", "triplet", stream=log, interval=0.0, disable=True)
    quiet.update(8)
    assert log.getvalue() == ""
    assert LogProgress("rows", "row", None, log, 30.0).line(2.0) == "rows: 0 rows, 0 rows/s"
