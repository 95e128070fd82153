"""Read and validate a batch: JSONL in the OpenAI batch line format or the short form.

OpenAI line:  {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Short form:   {"custom_id"?: "a", "model": "...", "messages": [...] | "input": ..., ...body fields}

Every line is checked before anything is stored: JSON, shape, model id (against the registry),
endpoint vs model kind, duplicate custom_ids, the model's own request rules (the adapter's
translation is pure, so running it here costs nothing and catches a rejected parameter early) and
whether the batch's mode can run the line (`--mode flex` and a model without a flex tier).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InvalidRequest, OTBError, RequestFailed
from worker.providers import ADAPTERS
from worker.registry import Registry
from worker.routes import REALTIME, refusal
from worker.schemas import CHAT_URL, EMBEDDINGS_URL, KIND_BY_URL, chat_request, embedding_request

OPENAI_LINE_KEYS = {"custom_id", "method", "url", "body"}
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_LINES = 100_000
MAX_CUSTOM_ID = 256
# Nesting levels a body may have. System.Text.Json stops at 64 by default, serde_json at 128, and Gemini
# parses request JSON into protobuf (100 levels, struct values counting twice); no real request comes
# close. A deeper body would also exhaust Python's stack in the worker (deeper there than here).
MAX_DEPTH = 64
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
# Byte-order marks of the encodings Windows tools save "Unicode" text in (UTF-32 first: it starts like UTF-16).
WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
             b"\xfe\xff": "UTF-16"}
EXPECTED = "expected JSONL, one request per line"


class NotJsonl(InvalidRequest):
    """A line that is not a JSON object at all: many of them mean the file is CSV, a JSON array, binary..."""


class BatchTooLarge(OTBError):
    """More lines than a batch holds: refused whole, even with keep-valid, so no line is silently left out."""


@dataclass
class Line:
    number: int
    custom_id: str
    url: str
    body: dict[str, Any] | None  # None once validated when streaming (read again at write time)


@dataclass
class LineError:
    number: int
    custom_id: str | None
    error: RequestFailed
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"line": self.number, "custom_id": self.custom_id, **self.error.to_openai()}

    def __str__(self) -> str:
        where = f"line {self.number}" if self.number else "file"  # 0: about the whole file (it is empty)
        return f"{where}: {json.dumps(self.error.to_openai())}"


@dataclass
class ParsedBatch:
    lines: list[Line] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    digest: str = ""  # of the valid lines' bytes: what an idempotency key is bound to
    models: set[str] = field(default_factory=set)  # of the valid lines


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = MAX_LINE_BYTES
    max_lines: int = MAX_LINES
    max_depth: int = MAX_DEPTH


def read_batch(
    raw_lines: Iterable[bytes],
    registry: Registry,
    *,
    drop_unsupported: bool = False,
    limits: Limits = Limits(),
    keep_bodies: bool = True,
    mode: str = REALTIME,
) -> ParsedBatch:
    """Validate every line; the result holds the good lines and every bad one with its reason.

    With `keep_bodies=False` only ids and line numbers are kept, so memory stays flat however long
    the file is (`stream_batch` hands the bodies over as they are read instead).
    """
    out = ParsedBatch()
    for _ in stream_batch(raw_lines, registry, out, drop_unsupported=drop_unsupported, limits=limits,
                          keep_bodies=keep_bodies, mode=mode):
        pass
    return out


def stream_batch(
    raw_lines: Iterable[bytes],
    registry: Registry,
    out: ParsedBatch,
    *,
    drop_unsupported: bool = False,
    limits: Limits = Limits(),
    keep_bodies: bool = False,
    mode: str = REALTIME,
    endpoint: str | None = None,
) -> Iterator[Line]:
    """The one pass over a file: validate line by line and yield each good line, body included, as
    soon as it is checked, so a submit can store it while the rest is read.

    `out` fills as the pass goes: every good line (without its body unless `keep_bodies`), every
    bad one with its reason, and at the end the digest an idempotency key is bound to. A line
    yielded stays good: a later duplicate of its custom_id is the later line's error. With `endpoint`,
    a line for another endpoint is an error (the Batch API's rule: one endpoint per batch).
    """
    digest = hashlib.sha256()
    first_seen: dict[str, int] = {}
    count = 0
    numbered = _numbered(raw_lines)
    for number, raw in numbered:
        count += 1
        if count > limits.max_lines:
            count += sum(1 for _ in numbered)
            raise BatchTooLarge(f"too many requests: the file has {count:,} request lines and a batch holds at most "
                                f"{limits.max_lines:,} (OTB_MAX_LINES); nothing was enqueued: split the file")
        if count == 1 and raw.startswith(GZIP_MAGIC):
            out.errors.append(LineError(number, None, NotJsonl(f"the file is gzip-compressed: {EXPECTED} "
                                                               "(decompress it first, e.g. gunzip -c FILE)")))
            break
        if count == 1 and _array_opened(raw):
            out.errors.append(LineError(number, None, NotJsonl(
                f"the file is a JSON array spread over lines: {EXPECTED}, each a JSON object (convert it first, "
                "e.g. jq -c '.[]' FILE > FILE.jsonl)")))
            break
        wide = _wide_encoding(raw) if count == 1 else None
        if wide:
            out.errors.append(LineError(number, None, NotJsonl(
                f"the file is {wide}-encoded: {EXPECTED} in UTF-8 (convert it first, e.g. "
                f"iconv -f {wide} -t UTF-8 FILE > FILE.utf8.jsonl)")))
            break
        try:
            line = _parse_line(number, raw, limits)
            if endpoint is not None and line.url != endpoint:
                raise InvalidRequest(f"'url' must be the batch's endpoint \"{endpoint}\", got {json.dumps(line.url)}",
                                     param="url")
            if line.custom_id in first_seen:
                raise InvalidRequest(
                    f'duplicate custom_id "{line.custom_id}" (first used on line {first_seen[line.custom_id]})',
                    param="custom_id",
                )
            _check_against_registry(line, registry, drop_unsupported, mode)
        except RequestFailed as error:
            cid, model = _ids_of(raw)
            out.errors.append(LineError(number, cid, error, model))
            continue
        first_seen[line.custom_id] = number
        digest.update(raw + b"\n")
        out.models.add(str((line.body or {}).get("model")))
        out.lines.append(line if keep_bodies else Line(line.number, line.custom_id, line.url, None))
        yield line
    if count == 0:
        out.errors.append(LineError(0, None, InvalidRequest("the batch is empty: it has no request lines")))
    out.digest = digest.hexdigest()


def _array_opened(first: bytes) -> bool:
    """A first line that opens a JSON array it does not close (`[`, `[{"custom_id": ...},`): a
    pretty-printed array, which gave one "invalid JSON" per line before."""
    text = first.strip()
    if not text.startswith(b"["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _wide_encoding(first: bytes) -> str | None:
    """UTF-16 or UTF-32 text, told by its byte-order mark or, without one, by the NUL bytes that ASCII
    text has in every other byte in those encodings (no valid UTF-8 JSON line holds a NUL)."""
    for bom, name in WIDE_BOMS.items():
        if first.startswith(bom):
            return name
    if b"\x00" in first[:64] and first.strip(b"\x00"):  # all NUL: not text at all, let JSON say so
        return "UTF-32" if first[:64].count(b"\x00") > len(first[:64]) // 2 else "UTF-16"
    return None


def _numbered(raw_lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines without their line ending (a UTF-8 BOM at the very start is dropped too)."""
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw.rstrip(b"\r\n")
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if raw.strip():
            yield number, raw


def _parse_line(number: int, raw: bytes, limits: Limits) -> Line:
    if len(raw) > limits.max_line_bytes:
        raise InvalidRequest(f"line is {len(raw)} bytes; the limit is {limits.max_line_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJsonl(f"line is not valid UTF-8 (byte {exc.start})") from exc
    obj = _json(text)
    if not isinstance(obj, dict):
        raise NotJsonl(f"a line must be a JSON object, got {_json_type(obj)}")
    line = _openai_line(number, obj) if "body" in obj or "url" in obj or "method" in obj else _short_line(number, obj)
    if _nests_deeper(line.body, limits.max_depth):
        raise InvalidRequest(f"the body is nested more than {limits.max_depth} levels deep; "
                             f"JSON parsers and the providers refuse such input")
    return line


def _json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise NotJsonl(f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}") from exc
    except RecursionError:
        raise InvalidRequest("invalid JSON: nested too deeply to read") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with thousands of digits
        raise InvalidRequest(f"invalid JSON: {exc}") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use a number or null)")


def _finite(text: str) -> float:
    """A JSON number as Python reads it, refusing those too large for a double (1e400 would become
    Infinity, which no JSON encoder will send on)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range (larger than 1.8e308)")
    return value


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests objects/arrays more than `limit` levels (level by level, never recursing)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            inner.extend(c for c in children if isinstance(c, (dict, list)))
        level = inner
    return False


def _json_type(obj: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(obj), "a number")


def _openai_line(number: int, obj: dict[str, Any]) -> Line:
    unknown = sorted(set(obj) - OPENAI_LINE_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0]}' in a batch line (allowed: custom_id, method, url, body)", param=unknown[0])
    custom_id = _custom_id(obj.get("custom_id"), number, required=True)
    if obj.get("method") != "POST":
        raise InvalidRequest(f"'method' must be \"POST\", got {json.dumps(obj.get('method'))}", param="method")
    url = obj.get("url")
    if url not in KIND_BY_URL:
        raise InvalidRequest(f"'url' must be \"{CHAT_URL}\" or \"{EMBEDDINGS_URL}\", got {json.dumps(url)}", param="url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("'body' must be a JSON object", param="body")
    return Line(number, custom_id, url, body)


def _short_line(number: int, obj: dict[str, Any]) -> Line:
    body = {k: v for k, v in obj.items() if k != "custom_id"}
    has_messages, has_input = "messages" in body, "input" in body
    if has_messages == has_input:
        raise InvalidRequest(
            "a short-form line needs exactly one of 'messages' (chat) or 'input' (embeddings)"
            + (" (it has both)" if has_messages else ""),
            param="messages",
        )
    custom_id = _custom_id(obj.get("custom_id"), number, required=False)
    return Line(number, custom_id, CHAT_URL if has_messages else EMBEDDINGS_URL, body)


def _custom_id(value: Any, number: int, *, required: bool) -> str:
    if value is None and not required:
        return f"request-{number}"
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'custom_id' must be a non-empty string", param="custom_id")
    if len(value) > MAX_CUSTOM_ID:
        raise InvalidRequest(f"'custom_id' is longer than {MAX_CUSTOM_ID} characters", param="custom_id")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("'custom_id' contains an invalid character (a lone UTF-16 surrogate)", param="custom_id") from None
    return value


def _check_against_registry(line: Line, registry: Registry, drop_unsupported: bool, mode: str = REALTIME) -> None:
    assert line.body is not None  # a line just parsed always has its body
    model = line.body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: a canonical id such as \"google/gemini-3-flash\"", param="model")
    kind = KIND_BY_URL[line.url]
    spec = registry.resolve_for(model, kind)
    adapter = ADAPTERS[spec.provider]
    api_version = registry.api_version(spec.provider)
    if kind == "chat":
        adapter.prepare_chat(chat_request(line.body), spec, api_version=api_version, drop_unsupported=drop_unsupported)
    else:
        adapter.prepare_embeddings(embedding_request(line.body), spec, api_version=api_version)
    refused = refusal(mode, spec, kind, line.body)
    if refused:
        raise InvalidRequest(refused, param="mode")


def _ids_of(raw: bytes) -> tuple[str | None, str | None]:
    """Best effort, for reporting: the line's custom_id and model if they are readable."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    inner = obj.get("body")
    body = inner if isinstance(inner, dict) else obj
    cid, model = obj.get("custom_id"), body.get("model")
    return (cid if _usable(cid) else None), (model if _usable(model) else None)


def _usable(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > MAX_CUSTOM_ID:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
