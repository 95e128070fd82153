"""Names of a package imported when first used (PEP 562), so importing the package stays cheap.

`otb --help` and `otb status` import `worker.errors` and `producer.status`; a package `__init__`
that imported its whole public API (pydantic models, the registry, redis, RQ) made every command
pay for all of it before doing anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, namespace: dict[str, Any], homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `name` comes from its submodule `homes[name]` on first use."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        namespace[name] = value  # once found, a plain attribute
        return value

    return __getattr__
