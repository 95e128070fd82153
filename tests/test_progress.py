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


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Scripted:
    """A client whose batch moves only through its event stream: each XREAD hands over the next events."""

    def __init__(self, statuses: list[dict], wakes: list[list[dict]]) -> None:
        self.statuses, self.wakes = statuses, wakes
        self.reads: list[int] = []  # the block (ms) of every XREAD of the batch's stream
        self.end_reads: list[int] = []  # ... and of every batch's end (otb:events)
        self.settings = type("S", (), {"queue_name": "otb"})()
        self.store = type("St", (), {"keys": type("K", (), {"events": staticmethod(lambda bid: f"otb:batch:{bid}:events"),
                                                            "all_events": "otb:events"})()})()
        self.conn = self

    def xrevrange(self, key: str, count: int) -> list:
        return []

    def xread(self, streams: dict, block: int) -> list:
        if "otb:events" in streams:  # no batch ends while it waits
            self.end_reads.append(block)
            return []
        self.reads.append(block)
        events = self.wakes.pop(0)
        return [(b"k", [(f"{i + len(self.reads)}-0".encode(), {k.encode(): v.encode() for k, v in e.items()})
                        for i, e in enumerate(events)])]

    def status(self, bid: str) -> dict:
        return self.statuses.pop(0)

    def listening_workers(self) -> int:
        return 1


def test_follow_is_woken_by_the_batch_events_not_a_timer(monkeypatch):
    from producer import progress

    slept: list[float] = []
    monkeypatch.setattr(progress.time, "sleep", slept.append)
    done = {**status(2, total=2), "status": "completed"}
    client = Scripted([{**status(0, total=2), "status": "in_progress"}, {**status(1, total=2), "status": "in_progress"}, done],
                      [[{"type": "request", "custom_id": "a", "outcome": "succeeded"}],
                       [{"type": "request", "custom_id": "b", "outcome": "succeeded"}, {"type": "batch", "status": "completed"}]])
    out = Terminal()
    assert progress.follow(client, "batch_x", out) == done  # type: ignore[arg-type]
    assert client.reads == [1000, 1000] and not client.statuses  # a status read per wake-up, no more (before: no XREAD)
    assert not slept  # no blind sleep: the redraw limit is a read that wakes at a batch's end
    assert len(client.end_reads) == 1 and 0 < client.end_reads[0] <= progress.REDRAW * 1000  # after events without the end
    assert "] 1/2 done" in out.getvalue() and "] 2/2 done" in out.getvalue()  # the bar moved with the events
