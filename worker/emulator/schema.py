"""Sample values from a JSON schema: the emulator's tool-call arguments and structured output."""

from __future__ import annotations

from typing import Any

from .core import is_int

SAMPLE_FORMATS = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "email": "user@example.com",
                  "uri": "https://example.com", "uuid": "00000000-0000-4000-8000-000000000000"}


def sample_from_schema(schema: Any, root: Any = None, required_only: bool = False, depth: int = 0) -> Any:
    """A value that validates against a (simple) JSON / OpenAPI schema: enum/const first, then by type.

    Tool inputs fill only `required` properties (what a terse model does); structured output fills
    them all, which also satisfies strict schemas (every property required, no extras).
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample_from_schema(target, root, required_only, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_from_schema(schema[key][0], root, required_only, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower()
    if kind == "object":
        raw_props, raw_required = schema.get("properties"), schema.get("required")
        props = raw_props if isinstance(raw_props, dict) else {}
        required = raw_required if isinstance(raw_required, list) else []
        names = [n for n in required if isinstance(n, str)] if required_only else list(props)
        return {n: sample_from_schema(props.get(n, {}), root, required_only, depth + 1) for n in names}
    if kind == "array":
        n = min(max(1, schema["minItems"]), 16) if is_int(schema.get("minItems")) else 1
        return [sample_from_schema(schema.get("items", {}), root, required_only, depth + 1) for _ in range(n)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        low = low if isinstance(low, (int, float)) and not isinstance(low, bool) else 1
        return int(low) if kind == "integer" else float(low) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    text = SAMPLE_FORMATS.get(fmt, "sample") if isinstance(fmt, str) else "sample"
    if is_int(schema.get("minLength")):
        text = text.ljust(min(schema["minLength"], 4096), "x")
    return text[: schema["maxLength"]] if is_int(schema.get("maxLength")) else text
