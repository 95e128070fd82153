"""The core: registry, pricing, provider adapters, the RQ chunk job and the Redis store.

`worker` knows nothing of `producer`; these are the names other code may rely on.
"""

from .errors import ConfigError, ModelNotFound, OTBError, RequestFailed
from .pricing import cost
from .registry import ModelSpec, Registry, load_registry
from .schemas import ChatRequest, Cost, EmbeddingRequest, Usage
from .settings import Settings

__all__ = [
    "ChatRequest", "ConfigError", "Cost", "EmbeddingRequest", "ModelNotFound", "ModelSpec", "OTBError", "Registry",
    "RequestFailed", "Settings", "Usage", "cost", "load_registry",
]
