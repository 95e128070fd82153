"""Prometheus metrics of the workers: what they run, what it costs, how the providers and the queue fare.

`otb worker --metrics-port PORT` serves them and `otb serve` mounts them at `/metrics` (metrics_serve.py).
Every label has a bounded set of values: models from the registry (anything else is `other`),
providers, outcomes, token buckets, HTTP status codes and our own error codes; never a batch or
custom id. Names follow Prometheus conventions (`_total` counters, `_seconds`, `_usd`).

Work horses. `otb worker` runs each chunk in a forked work horse, and what a horse counts in its own
memory dies with it. prometheus-client's multiprocess mode (mmap files per pid) was not used: every
horse is a new pid, so its files pile up (one set per chunk job since the worker started;
`mark_process_dead` removes only live gauges) and every scrape reads them all; the
`PROMETHEUS_MULTIPROC_DIR` variable must be set before the library is imported, in every process
that imports it; and a horse forked while the scrape thread held a metric's lock would inherit that
lock held. Instead the horse adds its increments up in plain dicts (`Buffered`, a few dict updates
per request, no lock shared with the parent) and a thread hands them to the parent every
`FLUSH_SECONDS` as a JSON line on a pipe opened before the fork (`HorseFeed`), and once more when
the job ends. The parent applies them to its registry (`Direct`), and at the pipe's end takes back
what the horse left in the in-flight gauge. A horse killed by SIGKILL loses at most its last
`FLUSH_SECONDS` of increments: metrics are for watching; exact counts and money are in the batch
records, results and reports.

Cost is a float counter in USD: fine for a rate or a dashboard; exact money stays Decimal in results
and reports.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Protocol

log = logging.getLogger("otb.metrics")

ROUTE = "realtime"  # how requests reach the providers; the flex and native batch routes come later
FLUSH_SECONDS = 0.5
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = {  # label -> the Usage fields it adds up (as aggregates.TOKEN_COUNTERS; reasoning is within output)
    "input": ("input_tokens",),
    "cache_read": ("cache_read_tokens",),
    "cache_write": ("cache_write_5m_tokens", "cache_write_1h_tokens"),
    "output": ("output_tokens",),
    "reasoning": ("reasoning_tokens",),
}

# (kind, name, help, labels): made into prometheus-client metrics on first use (`registry()`), so that
# importing this module (request.py does) costs a CLI command nothing; a horse never makes them.
SPECS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("counter", "otb_requests", "Requests the workers finished, by requested model, outcome (succeeded, errored, "
     "canceled, expired; parked: set aside to run later; skipped: another run had committed it) and route.",
     ("model", "outcome", "route")),
    ("counter", "otb_tokens", "Tokens of committed results, by requested model and bucket (reasoning is part "
     "of output).", ("model", "bucket")),
    ("counter", "otb_cost_usd", "Cost of committed results in USD, by requested model (a float; exact costs are "
     "in results and reports).", ("model",)),
    ("histogram", "otb_upstream_request_duration_seconds", "HTTP calls to the providers, answered or not, by "
     "provider.", ("provider",)),
    ("counter", "otb_upstream_calls", "HTTP calls to the providers by provider and code: the HTTP status, or "
     "upstream_timeout / upstream_unreachable when no answer came, cancelled when a stop cut it off.",
     ("provider", "code")),
    ("gauge", "otb_upstream_calls_in_flight", "HTTP calls to the providers in flight, by provider.", ("provider",)),
    ("counter", "otb_upstream_retries", "Calls sent again, by provider and the code of the failure before them "
     "(as in otb_upstream_calls_total, or upstream_protocol_error for an answer that was not JSON).",
     ("provider", "code")),
    ("counter", "otb_ratelimit_waits", "Waits for the shared rate-limit buckets or a cool-down, by provider.",
     ("provider",)),
    ("counter", "otb_ratelimit_wait_seconds", "Seconds spent waiting for the shared rate limits, by provider.",
     ("provider",)),
    ("counter", "otb_chunks_taken_over", "Chunks the janitor queued again because the worker running them died, "
     "by kind (started: run by its own job; claimed: taken by a running chunk).", ("kind",)),
    ("counter", "otb_chunks_abandoned", "Chunks whose open requests were ended instead of run again, by reason "
     "(worker_crashed: killed its workers too often; chunk_failed: RQ's retries spent).", ("reason",)),
)
GAUGES = frozenset(name for kind, name, _, _ in SPECS if kind == "gauge")

_made: dict[str, Any] = {}
_made_lock = threading.Lock()


def registry() -> Any:
    """This process's metrics (a prometheus_client CollectorRegistry), made on first use."""
    with _made_lock:
        if not _made:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

            made = CollectorRegistry()
            kinds: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
            for kind, name, doc, labels in SPECS:
                extra = {"buckets": LATENCY_BUCKETS} if kind == "histogram" else {}
                _made[name] = kinds[kind](name, doc, labels, registry=made, **extra)
            _made[""] = made
        return _made[""]


def metric(name: str) -> Any:
    registry()
    return _made[name]


class Sink(Protocol):
    """Where this process's increments go: the registry itself, or the parent worker."""

    def add(self, name: str, labels: tuple[str, ...], amount: float) -> None: ...

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None: ...


class Direct:
    """Applies increments to the registry; the labelled children are looked up once and kept."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, name: str, labels: tuple[str, ...]) -> Any:
        key = (name, labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric(name).labels(*labels)
        return found

    def add(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        self.child(name, labels).inc(amount)  # a Gauge's inc takes a negative amount: the in-flight count

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.child(name, labels).observe(value)

    def apply(self, batch: dict[str, Any]) -> None:
        """A horse's line: counter and gauge deltas, then histogram observations."""
        for name, labels, amount in batch.get("add", ()):
            self.add(name, tuple(labels), amount)
        for name, labels, values in batch.get("obs", ()):
            child = self.child(name, tuple(labels))
            for value in values:
                child.observe(value)


class Buffered:
    """In a work horse: increments add up in dicts until `drain` hands them over."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # made after the fork: no lock of the parent's is ever taken here
        self.adds: dict[tuple[str, tuple[str, ...]], float] = {}
        self.obs: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    def add(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        key = (name, labels)
        with self.lock:
            self.adds[key] = self.adds.get(key, 0.0) + amount

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        key = (name, labels)
        with self.lock:
            self.obs.setdefault(key, []).append(value)

    def drain(self) -> dict[str, Any] | None:
        """What was counted since the last drain, as one JSON-able batch; None if nothing."""
        with self.lock:
            adds, self.adds = self.adds, {}
            obs, self.obs = self.obs, {}
        if not adds and not obs:
            return None
        return {"add": [[n, list(lb), v] for (n, lb), v in adds.items() if v],
                "obs": [[n, list(lb), vs] for (n, lb), vs in obs.items()]}


class Discard:
    def add(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        pass

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        pass


_direct = Direct()
_sink: Sink = Discard()  # until this process serves its metrics (count_here): `otb run` pays nothing for them


# -- the hot path: a few dict lookups per request --------------------------------------------------
def request_done(model: str, outcome: str) -> None:
    _sink.add("otb_requests", (model, outcome, ROUTE), 1)


def billed(model: str, usage: Any, cost_usd: float) -> None:
    """Tokens by bucket and cost of a committed result (`usage`: a schemas.Usage)."""
    for bucket, fields in TOKEN_BUCKETS.items():
        count = sum(getattr(usage, f) for f in fields)
        if count:
            _sink.add("otb_tokens", (model, bucket), count)
    _sink.add("otb_cost_usd", (model,), cost_usd)


def call_started(provider: str) -> None:
    _sink.add("otb_upstream_calls_in_flight", (provider,), 1)


def call_ended(provider: str, code: str, seconds: float) -> None:
    _sink.add("otb_upstream_calls_in_flight", (provider,), -1)
    _sink.add("otb_upstream_calls", (provider, code), 1)
    _sink.observe("otb_upstream_request_duration_seconds", (provider,), seconds)


def retried(provider: str, code: str) -> None:
    _sink.add("otb_upstream_retries", (provider, code), 1)


def rate_limit_waited(provider: str, seconds: float) -> None:
    _sink.add("otb_ratelimit_waits", (provider,), 1)
    _sink.add("otb_ratelimit_wait_seconds", (provider,), seconds)


def taken_over(kind: str) -> None:
    _sink.add("otb_chunks_taken_over", (kind,), 1)


def abandoned(reason: str) -> None:
    _sink.add("otb_chunks_abandoned", (reason,), 1)


def count_here() -> None:
    """This process serves its metrics (metrics_serve.registry_for): count into its registry from now on."""
    global _sink
    _sink = _direct


def discard() -> None:
    """Count nothing: a work horse whose counts nobody serves (no prometheus-client import, no work)."""
    global _sink
    _sink = Discard()


def model_label(model: object, known: Iterable[str]) -> str:
    """A model id from the registry as it is, anything else `other`: a label never takes a caller's string."""
    return model if isinstance(model, str) and model in known else "other"


# -- work horses hand their increments to the parent -----------------------------------------------
class HorseFeed:
    """A pipe from one work horse to its parent worker, opened before the fork.

    In the horse (`in_horse`): increments go to a `Buffered` sink that a thread drains into the pipe
    every FLUSH_SECONDS; `close` drains it a last time. In the parent (`in_parent`): a thread applies
    each line to the registry until the horse's end closes the pipe, then takes back the horse's
    share of the gauges (its calls in flight died with it).
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.buffer: Buffered | None = None
        self.out: BinaryIO | None = None
        self.stop = threading.Event()
        self.flusher: threading.Thread | None = None

    # the horse's side
    def in_horse(self) -> None:
        global _sink
        os.close(self.read_fd)
        self.out = os.fdopen(self.write_fd, "wb")
        self.buffer = Buffered()
        _sink = self.buffer
        self.flusher = threading.Thread(target=self._flush_every, name="otb-metrics", daemon=True)
        self.flusher.start()

    def _flush_every(self) -> None:
        while not self.stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        if self.buffer is None or self.out is None:
            return
        batch = self.buffer.drain()
        if batch is None:
            return
        try:
            self.out.write(json.dumps(batch, separators=(",", ":")).encode() + b"\n")
            self.out.flush()
        except OSError:  # the parent is gone: nobody to count for
            pass

    def close(self) -> None:
        """The job is over: hand over what is left (the horse exits right after)."""
        self.stop.set()
        if self.flusher is not None:
            self.flusher.join(timeout=5)
        self.flush()

    # the parent's side
    def in_parent(self) -> threading.Thread:
        os.close(self.write_fd)
        pump = threading.Thread(target=self._pump, name="otb-metrics-feed", daemon=True)
        pump.start()
        return pump

    def _pump(self) -> None:
        outstanding: dict[tuple[str, tuple[str, ...]], float] = {}
        with os.fdopen(self.read_fd, "rb") as feed:
            for line in _complete_lines(feed):
                try:
                    batch = json.loads(line)
                    _direct.apply(batch)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("work horse metrics line ignored: %s", exc)
                    continue
                for name, labels, amount in batch.get("add", ()):
                    if name in GAUGES:
                        key = (name, tuple(labels))
                        outstanding[key] = outstanding.get(key, 0.0) + amount
        for (name, labels), amount in outstanding.items():
            if amount:
                _direct.add(name, labels, -amount)


def _complete_lines(feed: BinaryIO) -> Iterator[bytes]:
    """Whole lines only: a horse killed mid-write leaves a partial last line, which is dropped."""
    for line in feed:
        if line.endswith(b"\n"):
            yield line
