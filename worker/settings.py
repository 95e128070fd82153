"""One typed Settings object, read from the environment at the edge (CLI, worker start) and passed down.

This is the only module that reads `os.environ`. API keys are held here in memory only: they are
never part of a job, a Redis key, a result or a log line (`__repr__` masks them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .providers.endpoints import ENDPOINTS

# Package data: a symlink to the top-level registry.json in a checkout (the one file people edit),
# a real copy inside an installed wheel, so `otb` works from any directory without OTB_REGISTRY.
DEFAULT_REGISTRY = Path(__file__).resolve().parent / "registry.json"


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None  # None: embedded fakeredis (only `otb run` / `otb demo`)
    registry_path: Path = DEFAULT_REGISTRY
    key_prefix: str = "otb"
    queue_name: str = "otb"
    anthropic_base_url: str | None = None  # the older spelling of base_urls["anthropic"], which it beats
    google_base_url: str | None = None  # likewise for "google"
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    concurrency: int = 64  # HTTP calls in flight per worker process
    concurrency_per_model: int = 0  # ... and at most this many to one model (0: no cap of its own)
    concurrency_per_provider: int = 0  # ... and to one provider
    chunk_size: int = 100  # requests per RQ job
    request_timeout: float = 120.0  # seconds per HTTP call
    job_timeout: int = 3600  # seconds per RQ chunk job
    max_attempts: int = 5  # HTTP tries per request
    retry_max_wait: float = 60.0  # longest Retry-After honoured by sleeping
    result_ttl: int = 7 * 24 * 3600  # seconds results and batch records are kept
    aggregate_ttl: int = 400 * 24 * 3600  # seconds the hourly cost aggregates are kept (reports)
    lease_ttl: float = 15.0  # a chunk whose runner is silent this long is re-enqueued
    max_recoveries: int = 5  # re-runs of a chunk after its worker died, before its requests are failed
    stop_grace: float = 25.0  # seconds in-flight calls get to finish after SIGTERM
    limits_path: Path | None = None  # OTB_LIMITS: per-model rate limits (overrides the registry's)
    rate_burst: float = 0.05  # share of a minute's limit a bucket holds; the steady pace is the rest
    max_line_bytes: int = 8 * 1024 * 1024  # submission limits
    max_lines: int = 100_000
    redis_wait_replicas: int = 0  # OTB_REDIS_WAIT_REPLICAS: each commit waits for this many replicas (WAIT)
    redis_wait_ms: int = 100  # ... at most this long (OTB_REDIS_WAIT_MS)
    webhook_retry_ms: int = 5000  # OTB_WEBHOOK_RETRY_MS: a webhook's first retry wait, doubled per failure
    # Provider -> base URL, from each adapter's BASE_URL_ENV (OTB_<PROVIDER>_BASE_URL); unset: its default.
    base_urls: Mapping[str, str] = field(default_factory=dict)
    # Routes (worker/routes.py). A completion window at least `auto_min_window` long makes `auto` the
    # default mode (OTB_AUTO_MIN_WINDOW, 1 h). Under `auto`, Gemini chat lines go to flex when the window is
    # shorter than `gemini_native_min_window` (OTB_GEMINI_NATIVE_MIN_WINDOW, 24 h), to Gemini Batch Mode
    # when it is that long. A flex call may take `flex_timeout`
    # seconds (OTB_FLEX_TIMEOUT, 900: flex targets 1-15 min); a shed flex call (429/503) is retried in flex
    # for at most `flex_max_wait` s (OTB_FLEX_MAX_WAIT, 1200), never past half the chunk job's timeout less
    # one flex call, and only while the window, less its margin and one flex call, allows; then it is sent
    # standard. The margin (OTB_NATIVE_MARGIN) is a share of the window (`10%`, the default) or seconds (`600`).
    auto_min_window: float = 3600.0
    gemini_native_min_window: float = 86400.0
    flex_timeout: float = 900.0
    flex_max_wait: float = 1200.0
    native_margin_share: float | None = 0.10  # OTB_NATIVE_MARGIN as a share of the window ...
    native_margin_seconds: float | None = None  # ... or as seconds (exactly one is set)
    # Native provider batches (worker/native): their poller looks every `native_poll_interval` seconds
    # (OTB_NATIVE_POLL_INTERVAL, 60; backing off while nothing moves). `native_fault` is a test hook
    # (OTB_NATIVE_FAULT=exit-after-create: the process exits between the create and its record).
    native_poll_interval: float = 60.0
    native_fault: str = ""
    # The work horse's event loop (OTB_EVENT_LOOP): `uvloop` where it is installed (it comes with
    # uvicorn[standard] on Linux and macOS; it takes about a tenth off the horse's CPU per request),
    # else, or with `asyncio`, the standard loop.
    event_loop: str = "uvloop"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        keys = {name: env[e.api_key_env] for name, e in ENDPOINTS.items() if env.get(e.api_key_env)}
        urls = {name: env[e.base_url_env] for name, e in ENDPOINTS.items() if env.get(e.base_url_env)}
        margin = _margin(env.get("OTB_NATIVE_MARGIN") or "10%")
        return cls(
            redis_url=_redis_url(env.get("REDIS_URL") or None),
            registry_path=Path(env.get("OTB_REGISTRY") or DEFAULT_REGISTRY),
            key_prefix=env.get("OTB_KEY_PREFIX") or "otb",  # empty is unset, as for every variable
            queue_name=env.get("OTB_QUEUE") or "otb",
            base_urls=urls,
            api_keys=keys,
            concurrency=_int(env, "OTB_CONCURRENCY", 64),
            concurrency_per_model=_int(env, "OTB_CONCURRENCY_PER_MODEL", 0, allow_zero=True),
            concurrency_per_provider=_int(env, "OTB_CONCURRENCY_PER_PROVIDER", 0, allow_zero=True),
            chunk_size=_int(env, "OTB_CHUNK_SIZE", 100),
            request_timeout=float(_int(env, "OTB_REQUEST_TIMEOUT", 120)),
            job_timeout=_int(env, "OTB_JOB_TIMEOUT", 3600),
            max_attempts=_int(env, "OTB_MAX_ATTEMPTS", 5),
            result_ttl=_int(env, "OTB_RESULT_TTL", 7 * 24 * 3600),
            aggregate_ttl=_int(env, "OTB_AGGREGATE_TTL", 400 * 24 * 3600),
            lease_ttl=float(_int(env, "OTB_LEASE_TTL", 15)),
            max_recoveries=_int(env, "OTB_MAX_RECOVERIES", 5),
            stop_grace=float(_int(env, "OTB_STOP_GRACE", 25)),
            limits_path=Path(env["OTB_LIMITS"]) if env.get("OTB_LIMITS") else None,
            max_line_bytes=_int(env, "OTB_MAX_LINE_BYTES", 8 * 1024 * 1024),
            max_lines=_int(env, "OTB_MAX_LINES", 100_000),
            redis_wait_replicas=_int(env, "OTB_REDIS_WAIT_REPLICAS", 0, allow_zero=True),
            redis_wait_ms=_int(env, "OTB_REDIS_WAIT_MS", 100),
            auto_min_window=float(_int(env, "OTB_AUTO_MIN_WINDOW", 3600)),
            gemini_native_min_window=float(_int(env, "OTB_GEMINI_NATIVE_MIN_WINDOW", 86400)),
            flex_timeout=float(_int(env, "OTB_FLEX_TIMEOUT", 900)),
            flex_max_wait=float(_int(env, "OTB_FLEX_MAX_WAIT", 1200, allow_zero=True)),
            native_margin_share=margin[0],
            native_margin_seconds=margin[1],
            webhook_retry_ms=_int(env, "OTB_WEBHOOK_RETRY_MS", 5000),
            native_poll_interval=_seconds(env, "OTB_NATIVE_POLL_INTERVAL", 60.0),
            native_fault=env.get("OTB_NATIVE_FAULT") or "",
            event_loop=_choice(env, "OTB_EVENT_LOOP", ("uvloop", "asyncio")),
        )

    def base_url(self, provider: str) -> str:
        """Where `provider`'s calls go: a URL given for it, else its adapter's default."""
        named = {"anthropic": self.anthropic_base_url, "google": self.google_base_url}.get(provider)
        return (named or self.base_urls.get(provider) or ENDPOINTS[provider].default_base_url).rstrip("/")

    def pointed_at(self, url: str) -> "Settings":
        """Every provider sent to one base URL (the emulator), whatever was set before."""
        return replace(self, base_urls=dict.fromkeys(ENDPOINTS, url), anthropic_base_url=None, google_base_url=None)

    def window_margin(self, window: float) -> float:
        """Seconds kept free at the end of a completion window of `window` seconds (OTB_NATIVE_MARGIN)."""
        if self.native_margin_seconds is not None:
            return min(self.native_margin_seconds, window)
        return window * (self.native_margin_share or 0.0)

    def api_key(self, provider: str) -> str | None:
        return self.api_keys.get(provider)

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


def _redis_url(url: str | None) -> str | None:
    """REDIS_URL as given, once it has a scheme redis-py reads (the URL is not echoed: it may hold a password)."""
    if url is not None and not url.lower().startswith(REDIS_SCHEMES):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix:// (or redis+sentinel://, "
                          "rediss+sentinel:// to name Sentinels) (e.g. redis://127.0.0.1:6379/0, "
                          "rediss://user:password@host:6380/0, redis+sentinel://h1:26379,h2:26379/mymaster/0)")
    if url is not None and url.lower().startswith(("redis://", "rediss://")):
        try:
            urlsplit(url).port  # noqa: B018  (a port past 65535, or not a number, raises here)
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL has a bad port: {exc} (e.g. redis://127.0.0.1:6379/0)") from None
    return url


def _margin(raw: str) -> tuple[float | None, float | None]:
    """OTB_NATIVE_MARGIN: `10%` (a share of the window) or `600` (seconds), as (share, seconds)."""
    text = raw.strip()
    try:
        value = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        value = -1.0
    if text.endswith("%") and 0 <= value < 100:
        return value / 100, None
    if not text.endswith("%") and 0 <= value < float("inf"):
        return None, value
    raise ConfigError(f"OTB_NATIVE_MARGIN must be a share of the window such as 10% (below 100%) or seconds "
                      f"such as 600, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (the first is the default)."""
    raw = (env.get(name) or allowed[0]).strip().lower()
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {env.get(name)!r}")
    return raw


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds (fractions allowed: tests poll fast)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, allow_zero: bool = False) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'zero or more' if allow_zero else 'positive'}, got {value}")
    return value
