"""Provider adapters: pure translation between OpenAI shapes and each provider's wire format."""

from types import ModuleType

from . import anthropic, google

ADAPTERS: dict[str, ModuleType] = {"anthropic": anthropic, "google": google}

__all__ = ["ADAPTERS", "anthropic", "google"]
