"""The core: registry, pricing, provider adapters, the RQ chunk job and the Redis store.

`worker` knows nothing of `producer`; these are the names other code may rely on. They are imported
when first used (PEP 562), so `import worker.errors` (every `otb` command) does not pay for pydantic
and the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names

if TYPE_CHECKING:
    from .errors import ConfigError, ModelNotFound, OTBError, RequestFailed
    from .pricing import cost
    from .registry import ModelSpec, Registry, load_registry
    from .schemas import ChatRequest, Cost, EmbeddingRequest, Usage
    from .settings import Settings

_HOME = {
    "ConfigError": "errors", "ModelNotFound": "errors", "OTBError": "errors", "RequestFailed": "errors",
    "cost": "pricing", "ModelSpec": "registry", "Registry": "registry", "load_registry": "registry",
    "ChatRequest": "schemas", "Cost": "schemas", "EmbeddingRequest": "schemas", "Usage": "schemas",
    "Settings": "settings",
}

__all__ = sorted(_HOME)


__getattr__ = lazy_names(__name__, globals(), _HOME)
