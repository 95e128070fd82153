"""The contract between producer, worker and readers: request shapes, usage buckets, cost, results.

Requests are OpenAI-shaped (`/v1/chat/completions`, `/v1/embeddings`). Every sub-shape (content parts,
tool calls, tools, tool_choice, response_format) is typed here, once: submit-time validation and the
workers parse bodies with `chat_request` / `embedding_request`, and the adapters read attributes of
these objects. A shape error names its place one way everywhere, `messages[2].content[1].image_url.url`
(`error_path`), as the adapters do for the rules they check. Validation here is about shape only;
whether a model accepts a parameter is the adapter's call, from the registry's rules. Unknown fields
are kept (`extra="allow"`) so an adapter can name them or pass them through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from .errors import InvalidRequest
from .money import COST_FIELDS

CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
URL_BY_KIND = {"chat": CHAT_URL, "embedding": EMBEDDINGS_URL}
KIND_BY_URL = {CHAT_URL: "chat", EMBEDDINGS_URL: "embedding"}

Role = Literal["system", "developer", "user", "assistant", "tool"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
ToolMode = Literal["auto", "none", "required"]


class Shape(BaseModel):
    """A request sub-shape: unknown fields are kept, for the adapter to pass on or name."""

    model_config = ConfigDict(extra="allow")


def _by(pick: Callable[[Any], str | None], message: str) -> Discriminator:
    """A union that picks its branch from the raw value, so an error speaks of the chosen branch only
    (a plain union reports every branch's complaint, the first of them usually beside the point)."""
    return Discriminator(pick, custom_error_type="shape", custom_error_message=message)


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


# -- content parts --------------------------------------------------------------------------------
class TextPart(Shape):
    type: Literal["text"]
    text: str
    cache_control: Any = None  # our pass-through for Anthropic prompt caching; its adapter checks it


class RefusalPart(Shape):
    type: Literal["refusal"]
    refusal: str
    cache_control: Any = None


class ImageUrl(Shape):
    url: str
    detail: str | None = None


class ImagePart(Shape):
    type: Literal["image_url"]
    image_url: ImageUrl
    cache_control: Any = None

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v  # a bare URL string is taken as {"url": ...}


class OtherPart(Shape):
    """A part type no adapter translates (input_audio, file...): kept so the adapter can name it."""

    type: str
    cache_control: Any = None


_PART_TAGS = {"text": "text part", "refusal": "refusal part", "image_url": "image part"}


def _part_tag(value: Any) -> str | None:
    kind = _type_of(value)
    return _PART_TAGS.get(kind, "other part") if isinstance(kind, str) else None


ContentPart = Annotated[
    Union[Annotated[TextPart, Tag("text part")], Annotated[RefusalPart, Tag("refusal part")],
          Annotated[ImagePart, Tag("image part")], Annotated[OtherPart, Tag("other part")]],
    _by(_part_tag, "a content part needs a string 'type'"),
]
Content = Annotated[
    Union[Annotated[str, Tag("string content")], Annotated[list[ContentPart], Tag("content parts")]],
    _by(lambda v: "string content" if isinstance(v, str) else "content parts" if isinstance(v, list) else None,
        "must be a string or a list of content parts"),
]


# -- tool calls (in assistant messages) -----------------------------------------------------------
class FunctionCall(Shape):
    """`arguments` is a JSON object as text (an object itself, or ""/null for none, is accepted too)."""

    name: str
    arguments: str | dict[str, Any] | None = Field(default=None, union_mode="left_to_right")

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        _arguments(v)
        return v

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as an object (validation made sure they read as one)."""
        return _arguments(self.arguments)


def _arguments(value: str | dict[str, Any] | None) -> dict[str, Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}  # a call without arguments, as some clients send it
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    return dict(parsed)


class ToolCall(Shape):
    id: str | None = None  # Gemini matches results by name; Anthropic requires ids (its adapter says so)
    type: Literal["function"] = "function"
    function: FunctionCall
    extra_content: dict[str, Any] | None = None  # Gemini's thought signature rides here


# -- messages ------------------------------------------------------------------------------------
class Message(Shape):
    """One OpenAI chat message."""

    role: Role
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None  # Anthropic's signed thinking, sent back unchanged
    extra_content: dict[str, Any] | None = None  # Gemini's thought signature on a text turn

    @model_validator(mode="after")
    def _content_rules(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an 'assistant' message needs 'content' or 'tool_calls'")
        return self


# -- tools, tool_choice, response_format ------------------------------------------------------------
class FunctionDef(Shape):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema, passed on as given


class Tool(Shape):
    type: Literal["function"]
    function: FunctionDef
    cache_control: Any = None


class FunctionName(Shape):
    name: str


class NamedToolChoice(Shape):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Annotated[
    Union[Annotated[ToolMode, Tag("tool mode")], Annotated[NamedToolChoice, Tag("named tool")]],
    _by(lambda v: "tool mode" if isinstance(v, str) else "named tool" if isinstance(v, (dict, BaseModel)) else None,
        "must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}"),
]


class JsonSchemaSpec(Shape):
    name: str | None = None
    strict: bool | None = None
    schema_: dict[str, Any] = Field(alias="schema")


class TextFormat(Shape):
    type: Literal["text"]


class JsonObjectFormat(Shape):
    type: Literal["json_object"]


class JsonSchemaFormat(Shape):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


_FORMAT_TAGS = {"text": "text format", "json_object": "json_object format", "json_schema": "json_schema format"}
ResponseFormat = Annotated[
    Union[Annotated[TextFormat, Tag("text format")], Annotated[JsonObjectFormat, Tag("json_object format")],
          Annotated[JsonSchemaFormat, Tag("json_schema format")]],
    _by(lambda v: _FORMAT_TAGS.get(_type_of(v)), "must be {'type': 'text'}, {'type': 'json_object'} or "
        "{'type': 'json_schema', 'json_schema': {'schema': {...}}}"),
]


# -- the two request bodies -------------------------------------------------------------------------
def _json_number(v: Any) -> Any:
    """A JSON number, as OpenAI takes it: true/false would otherwise pass as 1/0, and "100" as 100."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(v, str):
        raise ValueError(f"must be a number, not a string ({json.dumps(v[:20])})")
    return v


class ChatRequest(BaseModel):
    """An OpenAI chat completion body. Unknown fields are kept so the adapter can name them."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's: a 64-bit integer
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort | None = None
    user: str | None = None
    stream: bool | None = None

    _numbers_are_numbers = field_validator(
        "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
        "presence_penalty", "frequency_penalty", mode="before")(_json_number)

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("'stream' is not supported in a batch; remove it")
        return v

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools or []]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] = Field(union_mode="left_to_right")
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    _dimensions_number = field_validator("dimensions", mode="before")(_json_number)

    @field_validator("input", mode="before")
    @classmethod
    def _strings_only(cls, v: Any) -> Any:
        if isinstance(v, list) and any(not isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of strings (token arrays are not supported)")
        if not isinstance(v, (str, list)):
            raise ValueError("must be a string or a list of strings")
        return v

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("'input' must not be an empty list")
        if any(not s for s in items):
            raise ValueError("'input' must not contain empty strings")
        return v

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- parsing a body: one error, one path style ------------------------------------------------------
_Body = TypeVar("_Body", ChatRequest, EmbeddingRequest)
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """A chat body as a typed request, or InvalidRequest naming the first bad place."""
    return _parsed(ChatRequest, body)


def embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """An embeddings body as a typed request, or InvalidRequest naming the first bad place."""
    return _parsed(EmbeddingRequest, body)


def _parsed(schema: type[_Body], body: Mapping[str, Any]) -> _Body:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = error_path(err["loc"])
        msg = "Input should be a valid dictionary" if err["type"] == "model_type" else err["msg"]  # not our class names
        msg = msg.removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidRequest(f"{'body.' + where if where else 'body'}: {msg}{more}", param=where) from None


def error_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as `messages[2].content[1].image_url.url`, without its names for union branches
    (the tags above, which hold a space, and `str`, `list[str]`... for plain unions)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (" " in part or "[" in part or "(" in part or part in _TYPE_NAMES):
            out += f".{part}" if out else part
    return out


# -- what a call used and cost ---------------------------------------------------------------------
class Usage(BaseModel):
    """Normalised token buckets. Disjoint: their sum is every token billed.

    Adapters fill these from provider fields exactly once; pricing never sees provider fields.
    `reasoning_tokens` is a subset of `output_tokens` (shown, not billed twice).
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cached or not (what size tiers and OpenAI's prompt_tokens count)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens

    def openai_chat_usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_5m_tokens + self.cache_write_1h_tokens,
            },
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def openai_embedding_usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}




class Cost(BaseModel):
    """USD, exact. Serialised as decimal strings so no reader ever sees a float."""

    input: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    total: Decimal = Decimal(0)

    def as_strings(self) -> dict[str, str]:
        return {name: format(getattr(self, name), "f") for name in COST_FIELDS}
