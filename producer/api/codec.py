"""Redis answers as text, and hash fields as redis-py's types want them (one place for both).

redis-py types its answers `bytes | str` (it depends on `decode_responses`) and wants a hash
mapping typed `Mapping[FieldT, EncodableT]` (a `dict[str, str]` does not pass: dict keys are
invariant). The clients here do not decode, so answers are bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.typing import EncodableT, FieldT

Fields = dict[FieldT, EncodableT]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def binary(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def text_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL answer as str -> str."""
    return {text(k): text(v) for k, v in raw.items()}
