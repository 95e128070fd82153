"""A corpus of malformed submissions: each is refused with a message naming the line and what to fix.

Every case is a whole input file (raw bytes, or a list of lines joined with newlines) and the
lines the user must be told about, each with the fragments its message must contain. The same
bytes go through `read_batch` (as the CLI reads them: a binary file split on newlines) and, in the
end-to-end test, through the real `otb submit` against a real Redis.

For every case:
  * exactly the expected line numbers are reported, in order, and `str(err)` is `line N: {json}`;
  * the error renders as an OpenAI error object (`{"error": {"message", "type", "code"}}`);
  * the message contains what a user needs to fix it (and, where given, `param` names the field);
  * submitting the parsed batch enqueues nothing (not one Redis key);
  * nothing raises: a crash would be a traceback for the user.
"""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest

from producer.batchfile import BatchTooLarge, Limits, read_batch
from producer.submit import SubmissionRejected, submit
from worker.settings import Settings

from .conftest import otb, worker_env

NOT_FOUND = {"error": {"message": 'model "openai/gpt-4o" not found', "type": "invalid_request_error",
                       "code": "model_not_found"}}

USER = [{"role": "user", "content": "hi"}]
SMALL_LINES = Limits(max_line_bytes=200)
FEW_LINES = Limits(max_lines=3)


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def chat(model: str = "google/gemini-3-flash", messages: list[dict] | None = None, **extra: Any) -> dict:
    return {"model": model, "messages": messages if messages is not None else USER, **extra}


def openai(cid: str, body: Any, url: str = "/v1/chat/completions", **extra: Any) -> dict:
    return {"custom_id": cid, "method": "POST", "url": url, "body": body, **extra}


def embed(model: str = "google/gemini-embedding-001", **extra: Any) -> dict:
    return {"model": model, **extra}


GOOD = j(chat())  # a valid short-form line (custom_id request-<n>)
GOOD_EMBED = j(embed(input="some text"))
WITH_TOOL_CALL = [  # a conversation with one assistant tool call and its answer
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                          "function": {"name": "lookup", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "12C"},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]

@dataclass(frozen=True)
class Case:
    id: str
    data: bytes | list[bytes]
    expect: dict[int, tuple[str, ...]]  # line number -> fragments its message must contain
    param: str | None = None  # the `param` the (single) error must name, if any
    code: str = "invalid_request"
    limits: Limits | None = None
    forbid: tuple[str, ...] = ()  # fragments the message must not contain

    def raw(self) -> bytes:
        if isinstance(self.data, bytes):
            return self.data
        return b"".join(line + b"\n" for line in self.data)

    def env(self) -> dict[str, str]:
        if self.limits is None:
            return {}
        return {"OTB_MAX_LINE_BYTES": str(self.limits.max_line_bytes), "OTB_MAX_LINES": str(self.limits.max_lines)}


def case(id: str, data: bytes | list[bytes], expect: dict[int, tuple[str, ...]] | tuple[str, ...], *,
         line: int = 1, **kw: Any) -> Case:
    if isinstance(expect, tuple):
        expect = {line: expect}
    return Case(id, data, expect, **kw)


CASES: list[Case] = [
    # -- broken JSON -------------------------------------------------------------------------------
    case("json-truncated", [GOOD, b'{"model": "google/gemini-3-flash", "messages": ['],
         ("invalid JSON", "Expecting value", "column 49"), line=2),
    case("json-truncated-last-line-without-newline", GOOD + b'\n{"model": "google/gemini-3-flash", "messages": [',
         ("invalid JSON", "Expecting value", "column 49"), line=2),
    case("json-trailing-comma", [b'{"model": "google/gemini-3-flash", "messages": [],}'],
         ("invalid JSON", "double quotes", "column 51")),
    case("json-single-quotes", [b"{'model': 'google/gemini-3-flash'}"], ("invalid JSON", "column 2")),
    case("json-python-literal", [b'{"model": "google/gemini-3-flash", "messages": None}'],
         ("invalid JSON", "Expecting value", "column 48")),
    case("json-unterminated-string", [GOOD, GOOD, b'{"model": "google/gemini-3-flash'],
         ("invalid JSON", "Unterminated string", "column 11"), line=3, forbid=("at at",)),
    case("json-two-objects-on-one-line", [GOOD + GOOD], ("invalid JSON", "Extra data", f"column {len(GOOD) + 1}")),
    case("json-object-split-over-lines", b'{"model": "google/gemini-3-flash",\n "messages": [{"role": "user", "content": "hi"}]}\n',
         {1: ("invalid JSON",), 2: ("invalid JSON",)}),
    case("json-comment-line", [b"// first request", GOOD], ("invalid JSON", "column 1")),
    case("json-nan-literal", [j(chat("google/gemini-2.5-flash"))[:-1] + b', "temperature": NaN}'], ("NaN",)),
    case("json-nested-too-deep", [GOOD, b"[" * 100_000 + b"]" * 100_000], ("JSON",), line=2),
    case("body-nested-deeper-than-providers-accept", [GOOD, j(chat())[:-1] + b', "metadata": ' + b"[" * 300 + b"]" * 300 + b"}"],
         ("nested more than 64 levels",), line=2, forbid=("Recursion",)),
    case("number-too-large-for-a-double", [j(chat())[:-1] + b', "response_format": {"type": "json_schema", '
                                           b'"json_schema": {"name": "x", "schema": {"maximum": 1e400}}}}'],
         ("1e400", "out of range"), forbid=("Infinity",)),
    case("json-integer-over-4300-digits", [j(chat())[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}"], ("JSON",)),
    # -- wrong top-level types ---------------------------------------------------------------------
    case("top-level-array", [b'[{"model": "google/gemini-3-flash"}]'], ("a line must be a JSON object",)),
    case("top-level-string", [GOOD, b'"hello"'], ("a line must be a JSON object",), line=2),
    case("top-level-number", [b"42"], ("a line must be a JSON object",)),
    case("top-level-true", [b"true"], ("a line must be a JSON object",)),
    case("json-array-one-line", [b"[" + GOOD + b"]"], ("a line must be a JSON object", "an array")),
    case("json-array-pretty-printed", [b"[", b"  " + GOOD + b",", b"  " + GOOD, b"]"],  # one error, not one a line
         ("the file is a JSON array spread over lines", "jq -c"), forbid=("line 2", "line 4")),
    case("top-level-null", [b"null"], ("a line must be a JSON object", "null"), forbid=("NoneType",)),
    # -- empty input -------------------------------------------------------------------------------
    case("empty-file", b"", {0: ("the batch is empty",)}),
    case("whitespace-only-file", b"   \n\t\n\r\n\n  ", {0: ("the batch is empty",)}),
    # -- bytes -------------------------------------------------------------------------------------
    case("latin-1-byte", [GOOD, j(chat(messages=[{"role": "user", "content": "cafe"}])).replace(b"cafe", b"caf\xe9")],
         ("not valid UTF-8", "byte 80"), line=2),
    case("utf-16-file", ["x".encode("utf-16")[:2] + GOOD.decode().encode("utf-16-le")], ("UTF-16-encoded", "iconv")),
    case("nul-byte-in-string", [GOOD.replace(b'"hi"', b'"h\x00i"')], ("invalid JSON", "control character")),
    case("nul-bytes-line", [GOOD, b"\x00\x00\x00\x00"], ("invalid JSON", "column 1"), line=2),
    # -- model -------------------------------------------------------------------------------------
    case("unknown-model", [GOOD, j(openai("q2", chat("openai/gpt-4o")))], ('model "openai/gpt-4o" not found',),
         line=2, code="model_not_found"),
    case("retired-model", [j(chat("anthropic/claude-opus-4-1"))],
         ('"anthropic/claude-opus-4-1" was retired on 2026-08-05', "use anthropic/claude-opus-5-5 instead"),
         param="model", code="model_retired"),
    case("model-missing", [j({"messages": USER})], ("'model' is required", "google/gemini-3-flash"), param="model"),
    # -- the OpenAI batch line -----------------------------------------------------------------------
    case("duplicate-custom-id", [j({"custom_id": "a", **chat()}), j({"custom_id": "b", **chat()}),
                                 j(openai("a", chat()))],
         ('duplicate custom_id "a"', "first used on line 1"), line=3, param="custom_id"),
    case("wrong-url", [j(openai("a", chat(), url="/v1/responses"))], ("'url' must be", '"/v1/responses"'), param="url"),
    case("missing-url", [j({"custom_id": "a", "method": "POST", "body": chat()})], ("'url' must be", "got null"),
         param="url"),
    case("wrong-method", [GOOD, b"", j({**openai("a", chat()), "method": "GET"})], ("'method' must be \"POST\"", '"GET"'),
         line=3, param="method"),
    case("missing-body", [j({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"})],
         ("'body' must be a JSON object",), param="body"),
    case("body-is-a-string", [j(openai("a", "model=google/gemini-3-flash"))], ("'body' must be a JSON object",),
         param="body"),
    case("body-is-a-list", [j(openai("a", [chat()]))], ("'body' must be a JSON object",), param="body"),
    case("unknown-top-level-field", [j(openai("a", chat(), metadata={"k": "v"}))],
         ("unknown field 'metadata'", "allowed: custom_id, method, url, body"), param="metadata"),
    case("custom-id-not-a-string", [j(openai(123, chat()))], ("'custom_id' must be a non-empty string",),  # type: ignore[arg-type]
         param="custom_id"),
    case("custom-id-empty-in-short-form", [j({"custom_id": "", **chat()})], ("'custom_id' must be a non-empty string",),
         param="custom_id"),
    case("custom-id-missing-in-openai-line", [j({"method": "POST", "url": "/v1/chat/completions", "body": chat()})],
         ("'custom_id' must be a non-empty string",), param="custom_id"),
    case("custom-id-too-long", [j(openai("x" * 257, chat()))], ("'custom_id' is longer than 256 characters",),
         param="custom_id"),
    case("custom-id-lone-surrogate", [j({"custom_id": "\ud800", **chat()})], ("custom_id",), param="custom_id"),
    # -- the short form ----------------------------------------------------------------------------
    case("short-form-messages-and-input", [j(chat(input="x"))], ("exactly one of 'messages'", "(it has both)")),
    case("short-form-neither", [j({"custom_id": "a", "model": "google/gemini-3-flash", "prompt": "hi"})],
         ("exactly one of 'messages' (chat) or 'input' (embeddings)",)),
    # -- limits ------------------------------------------------------------------------------------
    case("line-over-max-line-bytes", [GOOD, j(chat(messages=[{"role": "user", "content": "x" * 300}]))],
         ("line is 38", "bytes; the limit is 200"), line=2, limits=SMALL_LINES),
    # -- messages ----------------------------------------------------------------------------------
    case("openai-body-without-messages", [j(openai("a", {"model": "google/gemini-3-flash"}))],
         ("body.messages", "Field required"), param="messages"),
    case("messages-empty-list", [j(chat(messages=[]))], ("body.messages", "at least 1 item"), param="messages"),
    case("messages-not-a-list", [j(chat(messages="hi"))], ("body.messages", "valid list"), param="messages"),
    case("invalid-role", [j(chat(messages=[{"role": "robot", "content": "x"}]))],
         ("body.messages[0].role", "'user'", "'assistant'"), param="messages[0].role"),
    case("message-without-content", [j(chat(messages=[{"role": "system", "content": "be brief"}, {"role": "user"}]))],
         ("body.messages[1]", "a 'user' message needs 'content'"), param="messages[1]"),
    case("tool-message-without-tool-call-id",
         [j(chat(messages=WITH_TOOL_CALL[:2] + [{"role": "tool", "content": "12C"}]))],
         ("body.messages[2]", "a 'tool' message needs 'tool_call_id'"), param="messages[2]"),
    case("tool-call-arguments-not-json-anthropic",
         [j(chat("anthropic/claude-haiku-5-5", [WITH_TOOL_CALL[0],
             {**WITH_TOOL_CALL[1], "tool_calls": [{"id": "c1", "type": "function",
                                                   "function": {"name": "lookup", "arguments": "{city: Oslo}"}}]},
             WITH_TOOL_CALL[2]]))],
         ("body.messages[1].tool_calls[0].function.arguments", "not valid JSON"),
         param="messages[1].tool_calls[0].function.arguments"),
    case("tool-call-arguments-not-json-gemini",
         [j(chat("google/gemini-3-flash", [WITH_TOOL_CALL[0],
             {**WITH_TOOL_CALL[1], "tool_calls": [{"id": "c1", "type": "function",
                                                   "function": {"name": "lookup", "arguments": "{city: Oslo}"}}]},
             WITH_TOOL_CALL[2]]))],
         ("body.messages[1].tool_calls[0].function.arguments", "not valid JSON"),
         param="messages[1].tool_calls[0].function.arguments"),
    case("content-part-without-type",
         [j(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]))],
         ("body.messages[0].content[1]", "a content part needs a string 'type'"), param="messages[0].content[1]"),
    case("image-data-uri-without-base64-gemini",
         [j(chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}]}]))],
         ("messages[0].content[0]", "'data:<mime>;base64,<data>'"), param="messages[0].content[0]"),
    case("image-data-uri-without-mime-anthropic",
         [j(chat("anthropic/claude-haiku-5-5",
                 [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}}]}]))],
         ("messages[0].content[0]", "image_url.url must be http(s) or a base64 data: URI"),
         param="messages[0].content[0]"),
    case("image-data-uri-bad-base64",
         [j(chat("anthropic/claude-haiku-5-5",
                 [{"role": "user", "content": [{"type": "image_url",
                                                "image_url": {"url": "data:image/png;base64,not base64 at all!"}}]}]))],
         ("messages[0].content[0]", "base64"), param="messages[0].content[0]"),
    case("empty-user-content-anthropic", [j(chat("anthropic/claude-haiku-5-5", [{"role": "user", "content": ""}]))],
         ("messages[0]",)),
    # -- wrong types and ranges --------------------------------------------------------------------
    case("max-tokens-as-string", [j(chat(max_tokens="many"))], ("body.max_tokens", "not a string"), param="max_tokens"),
    case("max-tokens-as-numeric-string", [j(chat(max_tokens="100"))], ("body.max_tokens", "not a string"),
         param="max_tokens"),  # pydantic's lax mode took "100" as 100; OpenAI refuses it
    case("max-tokens-as-boolean", [j(chat(max_tokens=True))], ("body.max_tokens",), param="max_tokens"),
    case("temperature-out-of-range", [j(chat("google/gemini-2.5-flash", temperature=3))],
         ("body.temperature", "less than or equal to 2"), param="temperature"),
    case("n-zero", [j(chat(n=0))], ("body.n", "greater than or equal to 1"), param="n"),
    case("stream-true", [j(chat(stream=True))], ("body.stream", "'stream' is not supported in a batch"), param="stream"),
    # -- embeddings --------------------------------------------------------------------------------
    case("too-many-embedding-inputs", [GOOD_EMBED, j(embed(input=["x"] * 2049))],
         ("'input' has 2049 items", "google/gemini-embedding-001 takes at most 2048"), line=2, param="input"),
    case("embedding-input-empty-string", [j(embed(input=""))], ("body.input", "must not contain empty strings"),
         param="input"),
    case("embedding-input-empty-list", [j(embed("google/gemini-embedding-2", input=[]))],
         ("body.input", "must not be an empty list"), param="input"),
    case("embedding-dimensions-too-small", [j(embed(input="x", dimensions=64))],
         ("'dimensions' must be between 128 and 3072",), param="dimensions"),
    case("embedding-dimensions-too-large", [j(openai("e", embed(input="x", dimensions=4096), url="/v1/embeddings"))],
         ("'dimensions' must be between 128 and 3072",), param="dimensions"),
    case("embedding-input-token-arrays", [j(embed(input=[[1, 2, 3]]))], ("body.input:",), param="input",
         forbid=("input.str",)),
    case("chat-body-to-embedding-model", [j(chat("google/gemini-embedding-001"))],
         ('"google/gemini-embedding-001" is a', "send it to /v1/embeddings"), param="model"),
    case("chat-body-to-embedding-url", [j(openai("a", chat(), url="/v1/embeddings"))],
         ('"google/gemini-3-flash" is a chat model', "send it to /v1/chat/completions"), param="model"),
    case("embedding-body-to-chat-model", [j(embed("google/gemini-3-flash", input="x"))],
         ('"google/gemini-3-flash" is a chat model', "send it to /v1/chat/completions"), param="model"),
    case("embedding-to-anthropic", [j(openai("e", embed("anthropic/claude-haiku-5-5", input="x"), url="/v1/embeddings"))],
         ("Anthropic offers no embeddings", "google/gemini-embedding-"), param="model"),
    # -- the model's own rules ---------------------------------------------------------------------
    case("temperature-rejected-by-claude-opus-5-5", [j(chat("anthropic/claude-opus-5-5", temperature=0.3))],
         ("temperature is not supported by anthropic/claude-opus-5-5", "--drop-unsupported-params"),
         param="temperature", code="unsupported_parameter"),
    case("unknown-body-field-anthropic", [j(chat("anthropic/claude-haiku-5-5", max_token=100))],
         ("max_token is not supported by anthropic/claude-haiku-5-5",), param="max_token", code="unsupported_parameter"),
    case("max-tokens-above-model-limit", [j(chat("anthropic/claude-haiku-5-5", max_tokens=200_000))],
         ("max_tokens 200000", "anthropic/claude-haiku-5-5", "128000"), param="max_tokens"),
    case("max-completion-tokens-above-gemini-limit", [j(chat(max_completion_tokens=70_000))],
         ("max_completion_tokens 70000", "google/gemini-3-flash", "65536"), param="max_completion_tokens"),
    case("prefill-on-claude-opus-5-5",
         [j(chat("anthropic/claude-opus-5-5", USER + [{"role": "assistant", "content": "Sure,"}]))],
         ("ends with an assistant message (prefill)", "anthropic/claude-opus-5-5"), param="messages"),
    case("prefill-on-gemini-3-flash", [j(chat(messages=USER + [{"role": "assistant", "content": "Sure,"}]))],
         ("google/gemini-3-flash does not accept a final assistant message", "prefill"), param="messages"),
    case("tool-choice-not-in-tools-anthropic",
         [j(chat("anthropic/claude-haiku-5-5", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}))],
         ("tool_choice names 'search'", "not in tools"), param="tool_choice"),
    case("tool-choice-not-in-tools-gemini",
         [j(chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}))],
         ("tool_choice names 'search'", "not in 'tools'"), param="tool_choice"),
    case("six-stop-sequences-on-gemini", [j(chat(stop=["a", "b", "c", "d", "e", "f"]))],
         ("at most 5 stop sequences", "got 6"), param="stop"),
    # -- shapes the Gemini adapter does not expect -------------------------------------------------
    case("tool-call-function-is-a-string-gemini",
         [j(chat(messages=[WITH_TOOL_CALL[0], {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                                                     "function": "lookup"}]},
                           WITH_TOOL_CALL[2]]))],
         ("body.messages[1].tool_calls[0].function", "valid dictionary"),
         param="messages[1].tool_calls[0].function"),
    case("tool-choice-function-is-a-string-gemini", [j(chat(tools=TOOLS, tool_choice={"type": "function", "function": "lookup"}))],
         ("body.tool_choice.function", "valid dictionary"), param="tool_choice.function"),
    case("response-format-schema-is-a-string-gemini",
         [j(chat(response_format={"type": "json_schema", "json_schema": "{\"type\": \"object\"}"}))],
         ("body.response_format.json_schema", "valid dictionary"), param="response_format.json_schema"),
    # -- several bad lines in one file: each is reported ----------------------------------------------
    case("several-bad-lines", [b"{oops", GOOD, j(chat("openai/gpt-4o")), b"", j(chat(n=0)), GOOD_EMBED],
         {1: ("invalid JSON",), 3: ('model "openai/gpt-4o" not found',), 5: ("body.n",)}),
]


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases]


def parse(c: Case, registry, **kw: Any):  # type: ignore[no-untyped-def]
    """Exactly what the CLI does: a binary file's lines."""
    limits = c.limits or Limits()
    return read_batch(io.BytesIO(c.raw()), registry, limits=limits, **kw)


def test_the_corpus_is_big_and_ids_are_unique():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", _params(CASES))
def test_bad_input_is_refused_naming_line_and_reason(registry, c: Case):
    parsed = parse(c, registry)
    numbers = [e.number for e in parsed.errors]
    messages = [e.error.message for e in parsed.errors]
    assert numbers == list(c.expect), messages

    for err in parsed.errors:
        rendered = err.error.to_openai()
        assert set(rendered) == {"error"}
        body = rendered["error"]
        assert {"message", "type", "code"} <= set(body)
        assert all(isinstance(body[k], str) and body[k] for k in ("message", "type", "code"))
        assert body["type"] == "invalid_request_error"
        text = str(err)
        prefix = f"line {err.number}: " if err.number else "file: "  # 0: about the whole file
        assert text.startswith(prefix)
        assert json.loads(text[len(prefix):]) == rendered
        for needle in c.expect[err.number]:
            assert needle in body["message"], f"{needle!r} not in {body['message']!r}"
        for bad in c.forbid:
            assert bad not in body["message"]

    if len(parsed.errors) == 1:
        body = parsed.errors[0].error.to_openai()["error"]
        assert body["code"] == c.code
        if c.param is not None:
            assert body.get("param") == c.param

    conn = fakeredis.FakeRedis()
    limits = c.limits or Limits()
    settings = Settings(max_line_bytes=limits.max_line_bytes, max_lines=limits.max_lines)
    with pytest.raises(SubmissionRejected, match="nothing was enqueued"):
        submit(conn, settings, registry, io.BytesIO(c.raw()))
    assert conn.keys("*") == []


def test_unknown_model_is_the_exact_product_error(registry):
    c = next(c for c in CASES if c.id == "unknown-model")
    (err,) = parse(c, registry).errors
    assert err.error.to_openai() == NOT_FOUND
    assert str(err) == "line 2: " + json.dumps(NOT_FOUND)
    assert err.custom_id == "q2"


def test_the_line_limits_are_configurable(registry):
    too_long = next(c for c in CASES if c.id == "line-over-max-line-bytes")
    assert parse(too_long, registry).errors  # refused at 200 bytes...
    parsed = read_batch(io.BytesIO(too_long.raw()), registry, limits=Limits(max_line_bytes=400))
    assert parsed.errors == [] and len(parsed.lines) == 2  # ...accepted at 400
    assert read_batch(io.BytesIO(too_long.raw()), registry).errors == []  # and by default (8 MiB)

    too_many = b"".join(GOOD + b"\n" for _ in range(5))  # over the limit: the whole file is refused (test_new_user)
    with pytest.raises(BatchTooLarge, match="at most 3"):
        read_batch(io.BytesIO(too_many), registry, limits=FEW_LINES)
    assert read_batch(io.BytesIO(too_many), registry, limits=Limits(max_lines=5)).errors == []
    assert read_batch(io.BytesIO(too_many), registry).errors == []


def test_a_line_of_exactly_the_limit_is_accepted(registry):
    parsed = read_batch(io.BytesIO(GOOD + b"\n"), registry, limits=Limits(max_line_bytes=len(GOOD)))
    assert parsed.errors == []


def test_the_rejected_parameter_passes_when_dropping_is_asked_for(registry):
    c = next(c for c in CASES if c.id == "temperature-rejected-by-claude-opus-5-5")
    parsed = parse(c, registry, drop_unsupported=True)
    assert parsed.errors == []
    assert [ln.custom_id for ln in parsed.lines] == ["request-1"]


# -- end to end: the real CLI on every file, against a real Redis ---------------------------------
LINE = re.compile(r"line (\d+): (\{.*\})")


def _submit_each(cases: list[Case], tmp_path, redis_url: str, emulator_url: str):  # type: ignore[no-untyped-def]
    def run(c: Case):  # type: ignore[no-untyped-def]
        path = tmp_path / f"{c.id}.jsonl"
        path.write_bytes(c.raw())
        return otb(["submit", str(path)], worker_env(redis_url, emulator_url, **c.env()), timeout=60)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(zip(cases, pool.map(run, cases)))


def _check_refused(c: Case, proc, *, check_text: bool) -> None:  # type: ignore[no-untyped-def]
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert "Traceback" not in out + err, err
    assert proc.returncode == 1, (out, err)
    assert out == ""  # no batch id
    reported = [(int(m.group(1)), json.loads(m.group(2))) for m in map(LINE.fullmatch, err.splitlines()) if m]
    assert [n for n, _ in reported] == [n for n in c.expect if n], err  # line 0 (the whole file) is said once, last
    for n, obj in reported:
        assert {"message", "type", "code"} <= set(obj["error"])
        if check_text:
            for needle in c.expect[n]:
                assert needle in obj["error"]["message"], (needle, obj)
    assert "nothing was enqueued" in err.splitlines()[-1]
    for needle in c.expect.get(0, ()) if check_text else ():
        assert needle in err.splitlines()[-1], (needle, err)


@pytest.mark.e2e
def test_cli_refuses_every_bad_file_and_enqueues_nothing(tmp_path, redis_server, emulator, real_redis):
    cases = list(CASES)
    runs = _submit_each(cases, tmp_path, redis_server.url, emulator.url)
    failures = []
    for c, proc in runs:
        try:
            _check_refused(c, proc, check_text=True)
        except AssertionError as exc:
            failures.append(f"{c.id}: {exc}")
    assert failures == []
    unknown = next(proc for c, proc in runs if c.id == "unknown-model")
    assert "line 2: " + json.dumps(NOT_FOUND) in unknown.stderr.decode().splitlines()
    assert real_redis.dbsize() == 0


@pytest.mark.e2e
def test_cli_does_not_suggest_keep_valid_when_it_cannot_help(tmp_path, redis_server, emulator, real_redis):
    env = worker_env(redis_server.url, emulator.url)
    bad = tmp_path / "all-bad.jsonl"
    bad.write_bytes(b"{oops\n[1]\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for args in (["submit", "--keep-valid", str(bad)], ["submit", str(empty)]):
        proc = otb(args, env)
        assert proc.returncode == 1
        assert "--keep-valid" not in proc.stderr.decode().splitlines()[-1], proc.stderr.decode()
    assert real_redis.dbsize() == 0


def test_a_utf8_bom_at_the_start_of_the_file_is_accepted(registry):
    parsed = read_batch(io.BytesIO(b"\xef\xbb\xbf" + GOOD + b"\n" + GOOD + b"\n"), registry)
    assert parsed.errors == [] and len(parsed.lines) == 2
