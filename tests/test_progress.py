"""Progress output: a redrawn bar on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import io

from producer.progress import Progress


def status(done: int, total: int = 10, errored: int = 0, cost: str = "0.01") -> dict:
    return {"id": "batch_x", "cost": {"total": cost}, "parked": None,
            "request_counts": {"total": total, "processing": total - done, "errored": errored, "canceled": 0, "expired": 0}}


def test_terminal_gets_one_redrawn_bar():
    out = io.StringIO()
    p = Progress(out, tty=True)
    p.update(status(0))
    p.update(status(5, errored=1))
    p.finish(status(10, errored=1, cost="0.02"))
    text = out.getvalue()
    assert text.count("\r\033[K") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[############............] 5/10 done, 1 errored" in text
    assert "10/10 done, 1 errored" in text and "cost $0.02" in text and "done" in text.splitlines()[-1]


def test_pipes_get_plain_lines_not_every_poll():
    out = io.StringIO()
    p = Progress(out, tty=False, every=60)
    for done in range(10):
        p.update(status(done))
    p.finish(status(10))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first poll and the end
    assert lines[0].startswith("batch_x: 0/10 done") and "\r" not in out.getvalue()
    assert lines[1].startswith("batch_x: 10/10 done")
