"""What the handlers share: counts for /_emulator/stats, caches, fail-first memory, per-model rate windows.

Touched only from the server's event loop, so nothing here locks.
"""

from __future__ import annotations

import collections
import random
import time
from collections import Counter
from typing import Any

from aiohttp import web

from .. import clock
from ..registry import ModelSpec, Registry
from .core import EmuError, EmulatorConfig

MEMORY_CAP = 200_000  # cache/fail-first entries kept before forgetting (long benchmarks)


class State:
    """Everything the handlers share; touched only from the server's event loop."""

    def __init__(self, config: EmulatorConfig, registry: Registry | None) -> None:
        self.config, self.registry = config, registry
        self.rng = random.Random(config.seed)
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.batch_items: Counter[str] = Counter()  # requests answered inside native batch jobs, by model
        self.fail_first: dict[bytes, int] = {}
        self.cache_seen: set[bytes] = set()
        self.system_seen: set[bytes] = set()
        self.windows: dict[str, collections.deque[tuple[float, int]]] = {}
        self.limited = 0

    def record(self, kind: str, status: str, model: str | None) -> None:
        self.calls += 1
        self.by_path[kind] += 1
        self.by_status[status] += 1
        self.by_model[model or "unknown"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"calls": self.calls, "by_path": dict(self.by_path), "by_status": dict(self.by_status),
                "by_model": dict(self.by_model), "rate_limited": self.limited,
                "batch_items": dict(self.batch_items)}

    def admit(self, model: str, tokens_in: int) -> None:
        """The provider's per-model RPM/TPM limit over a sliding 60 s window: 429 above it."""
        cfg = self.config
        if not (cfg.rpm_limit or cfg.tpm_limit):
            return
        now = time.monotonic()
        window = self.windows.setdefault(model, collections.deque())
        while window and now - window[0][0] >= 60:
            window.popleft()
        used = sum(t for _, t in window)
        if (cfg.rpm_limit and len(window) + 1 > cfg.rpm_limit) or (cfg.tpm_limit and used + tokens_in > cfg.tpm_limit):
            self.limited += 1
            wait = 60 - (now - window[0][0]) if window else 1.0
            raise EmuError(429, f"rate limit exceeded for {model} (emulated {cfg.rpm_limit} RPM / {cfg.tpm_limit} TPM)",
                           retry_after=max(round(wait, 3), 0.001))
        window.append((now, tokens_in))

    def remember(self, memory: set[bytes], key: bytes) -> None:
        if len(memory) >= MEMORY_CAP:
            memory.clear()
        memory.add(key)

    def spec(self, provider: str, model: str) -> ModelSpec | None:
        return self.registry.by_upstream(provider, model) if self.registry else None

    def check_retired(self, provider: str, model: str, message: str) -> None:
        spec = self.spec(provider, model)
        if spec is not None and spec.is_retired(clock.today()):
            raise EmuError(404, message)


STATE = web.AppKey("emulator_state", State)
