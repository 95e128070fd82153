"""Provider adapters: pure translation between OpenAI shapes and each provider's wire format.

`ADAPTERS` is the one list of providers; each entry satisfies `base.Provider` (mypy checks it here).
"""

from __future__ import annotations

from . import anthropic, google
from .base import Provider

_ALL: tuple[Provider, ...] = (anthropic, google)
ADAPTERS: dict[str, Provider] = {adapter.NAME: adapter for adapter in _ALL}

__all__ = ["ADAPTERS", "Provider", "anthropic", "google"]
