"""Settings.from_env: every variable the README documents is read into its field, and a bad value stops
the process with one clear ConfigError line naming the variable (never a traceback, never a secret)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from worker.errors import ConfigError
from worker.settings import DEFAULT_REGISTRY, Settings

from .conftest import ROOT

# variable -> (a value, the field it sets, what the field then holds)
EVERY: dict[str, tuple[str, str, Any]] = {
    "REDIS_URL": ("rediss://user:pw@cache:6380/2", "redis_url", "rediss://user:pw@cache:6380/2"),
    "OTB_REGISTRY": ("/etc/otb/registry.json", "registry_path", Path("/etc/otb/registry.json")),
    "ANTHROPIC_API_KEY": ("sk-ant-1", "api_keys", {"anthropic": "sk-ant-1"}),
    "GEMINI_API_KEY": ("gm-1", "api_keys", {"google": "gm-1"}),
    "OTB_ANTHROPIC_BASE_URL": ("http://127.0.0.1:8090", "base_urls", {"anthropic": "http://127.0.0.1:8090"}),
    "OTB_GOOGLE_BASE_URL": ("http://127.0.0.1:8091", "base_urls", {"google": "http://127.0.0.1:8091"}),
    "OTB_CONCURRENCY": ("200", "concurrency", 200),
    "OTB_CONCURRENCY_PER_MODEL": ("8", "concurrency_per_model", 8),
    "OTB_CONCURRENCY_PER_PROVIDER": ("16", "concurrency_per_provider", 16),
    "OTB_CHUNK_SIZE": ("1000", "chunk_size", 1000),
    "OTB_MAX_ATTEMPTS": ("2", "max_attempts", 2),
    "OTB_REQUEST_TIMEOUT": ("30", "request_timeout", 30.0),
    "OTB_JOB_TIMEOUT": ("600", "job_timeout", 600),
    "OTB_RESULT_TTL": ("86400", "result_ttl", 86400),
    "OTB_AGGREGATE_TTL": ("7200", "aggregate_ttl", 7200),
    "OTB_KEY_PREFIX": ("acme", "key_prefix", "acme"),
    "OTB_QUEUE": ("bulk", "queue_name", "bulk"),
    "OTB_LEASE_TTL": ("9", "lease_ttl", 9.0),
    "OTB_MAX_RECOVERIES": ("1", "max_recoveries", 1),
    "OTB_STOP_GRACE": ("5", "stop_grace", 5.0),
    "OTB_LIMITS": ("/etc/otb/limits.json", "limits_path", Path("/etc/otb/limits.json")),
    "OTB_MAX_LINE_BYTES": ("1024", "max_line_bytes", 1024),
    "OTB_MAX_LINES": ("10", "max_lines", 10),
    "OTB_REDIS_WAIT_REPLICAS": ("1", "redis_wait_replicas", 1),
    "OTB_REDIS_WAIT_MS": ("250", "redis_wait_ms", 250),
    "OTB_WEBHOOK_RETRY_MS": ("100", "webhook_retry_ms", 100),
    "OTB_AUTO_MIN_WINDOW": ("7200", "auto_min_window", 7200.0),
    "OTB_GEMINI_NATIVE_MIN_WINDOW": ("43200", "gemini_native_min_window", 43200.0),
    "OTB_FLEX_TIMEOUT": ("600", "flex_timeout", 600.0),
    "OTB_FLEX_MAX_WAIT": ("300", "flex_max_wait", 300.0),
    "OTB_NATIVE_MARGIN": ("25%", "native_margin_share", 0.25),  # or seconds: tests/test_routes.py
    "OTB_NATIVE_POLL_INTERVAL": ("0.5", "native_poll_interval", 0.5),
    "OTB_NATIVE_FAULT": ("exit-after-create", "native_fault", "exit-after-create"),
    "OTB_EVENT_LOOP": ("asyncio", "event_loop", "asyncio"),
}
NOT_WHOLE = {"OTB_NATIVE_MARGIN", "OTB_NATIVE_POLL_INTERVAL"}  # a share (10%) or seconds (600.5); fractions of s
WHOLE_NUMBERS = [name for name, (_, _, held) in EVERY.items() if isinstance(held, (int, float)) and name not in NOT_WHOLE]
ZERO_ALLOWED = {"OTB_CONCURRENCY_PER_MODEL", "OTB_CONCURRENCY_PER_PROVIDER",  # 0: no cap of its own
                "OTB_REDIS_WAIT_REPLICAS",  # 0: commits do not wait for replicas
                "OTB_FLEX_MAX_WAIT"}  # 0: a shed flex call goes standard at once


def documented() -> set[str]:
    """The variables in the README's Configuration table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n\n", 2)[1]
    return {name for row in table.splitlines() for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_documented_variable_is_tested_here() -> None:
    assert documented() == set(EVERY)


def test_nothing_set_means_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().registry_path == DEFAULT_REGISTRY and Settings().redis_url is None


@pytest.mark.parametrize("name", list(EVERY))
def test_each_variable_sets_its_field(name: str) -> None:
    raw, field, held = EVERY[name]
    settings = Settings.from_env({name: raw})
    assert getattr(settings, field) == held
    others = {f: v for f, v in vars(Settings()).items() if f != field}
    assert {f: v for f, v in vars(settings).items() if f != field} == others  # and nothing else


@pytest.mark.parametrize("name", list(EVERY))
def test_an_empty_variable_is_an_unset_one(name: str) -> None:
    """`OTB_QUEUE=` in an env file means "not set", as for every other variable (before: an empty queue name
    and an empty key prefix, so `rq:queue:` and `:batch:...` keys)."""
    assert Settings.from_env({name: ""}) == Settings()


def test_the_variables_work_together() -> None:
    env = {name: raw for name, (raw, _, _) in EVERY.items()}
    settings = Settings.from_env(env)
    assert settings.api_keys == {"anthropic": "sk-ant-1", "google": "gm-1"}
    assert settings.base_url("anthropic") == "http://127.0.0.1:8090"
    assert settings.base_url("google") == "http://127.0.0.1:8091"


def test_base_urls_lose_a_trailing_slash_and_default_to_the_providers() -> None:
    assert Settings.from_env({"OTB_ANTHROPIC_BASE_URL": "http://proxy/"}).base_url("anthropic") == "http://proxy"
    assert Settings().base_url("anthropic") == "https://api.anthropic.com"
    assert Settings().base_url("google") == "https://generativelanguage.googleapis.com"


@pytest.mark.parametrize("name", WHOLE_NUMBERS)
@pytest.mark.parametrize("bad", ["many", "1.5", "-3", "0", "1e3", " "])
def test_a_bad_number_is_one_clear_error_naming_the_variable(name: str, bad: str) -> None:
    if bad == "0" and name in ZERO_ALLOWED:
        assert getattr(Settings.from_env({name: bad}), EVERY[name][1]) == 0
        return
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({name: bad})
    if bad in ("-3", "0"):
        assert str(exc.value) == f"{name} must be {'zero or more' if name in ZERO_ALLOWED else 'positive'}, got {bad}"
    else:
        assert str(exc.value) == f"{name} must be a whole number, got {bad!r}"


@pytest.mark.parametrize("url", ["localhost:6379", "cache.example:6379/0", "http://cache:6379", "user:s3cret@cache:6379"])
def test_a_redis_url_without_its_scheme_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"REDIS_URL": url})
    message = str(exc.value)
    assert message.startswith("REDIS_URL must start with redis://, rediss:// or unix://") and "\n" not in message
    assert url not in message and "s3cret" not in message  # it may hold a password


def test_api_keys_are_not_in_the_repr() -> None:
    settings = Settings.from_env({"ANTHROPIC_API_KEY": "sk-ant-secret", "GEMINI_API_KEY": "gm-secret"})
    assert "secret" not in repr(settings) and "secret" not in str(settings)
    assert settings.api_key("anthropic") == "sk-ant-secret" and settings.api_key("google") == "gm-secret"


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTB_CHUNK_SIZE", "7")
    assert Settings.from_env().chunk_size == 7


def test_the_event_loop_is_uvloop_or_asyncio_and_nothing_else() -> None:
    assert Settings().event_loop == Settings.from_env({}).event_loop == "uvloop"
    assert Settings.from_env({"OTB_EVENT_LOOP": "UVLoop "}).event_loop == "uvloop"
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"OTB_EVENT_LOOP": "trio"})
    assert str(exc.value) == "OTB_EVENT_LOOP must be one of uvloop, asyncio, got 'trio'"
