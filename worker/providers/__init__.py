"""Provider adapters: pure translation between OpenAI shapes and each provider's wire format.

`ADAPTERS` is the one list of providers; each entry satisfies `base.Provider` (mypy checks it in
`_adapters`). It is built on first use, so that `endpoints` (what settings.py reads at every start)
does not load the adapters, the registry and pydantic with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import anthropic, google
    from .base import Provider

    ADAPTERS: dict[str, Provider]

__all__ = ["ADAPTERS", "Provider", "anthropic", "google"]


def _adapters() -> dict[str, Provider]:
    from . import anthropic, google

    every: tuple[Provider, ...] = (anthropic, google)
    return {adapter.NAME: adapter for adapter in every}


def __getattr__(name: str) -> Any:
    if name == "ADAPTERS":
        value: Any = _adapters()
    elif name == "Provider":
        from .base import Provider as value
    elif name in ("anthropic", "google"):
        import importlib

        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once found, a plain attribute
    return value
