"""The contract between producer, worker and readers: request shapes, usage buckets, cost, results.

Requests are OpenAI-shaped (`/v1/chat/completions`, `/v1/embeddings`). Validation here is about
shape only; whether a model accepts a parameter is the adapter's call, from the registry's rules.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
URL_BY_KIND = {"chat": CHAT_URL, "embedding": EMBEDDINGS_URL}
KIND_BY_URL = {CHAT_URL: "chat", EMBEDDINGS_URL: "embedding"}

Role = Literal["system", "developer", "user", "assistant", "tool"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class Message(BaseModel):
    """One OpenAI chat message. Content parts stay dicts: the adapters translate them."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an 'assistant' message needs 'content' or 'tool_calls'")
        if isinstance(self.content, list):
            for i, part in enumerate(self.content):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {i} needs a string 'type'")
        return self


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
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: ReasoningEffort | None = None
    user: str | None = None
    stream: bool | None = None

    @field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
                     "presence_penalty", "frequency_penalty", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, v: Any) -> Any:
        if isinstance(v, bool):  # JSON true/false would otherwise pass as 1/0
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("'stream' is not supported in a batch; remove it")
        return v

    @field_validator("tools")
    @classmethod
    def _tools_are_functions(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(v or []):
            fn = tool.get("function")
            if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
        return v

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] = Field(union_mode="left_to_right")
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    @field_validator("dimensions", mode="before")
    @classmethod
    def _dimensions_number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, not true/false")
        return v

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


COST_FIELDS = ("input", "cache_read", "cache_write", "output", "total")


class Cost(BaseModel):
    """USD, exact. Serialised as decimal strings so no reader ever sees a float."""

    input: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    total: Decimal = Decimal(0)

    def as_strings(self) -> dict[str, str]:
        return {name: format(getattr(self, name), "f") for name in COST_FIELDS}
