"""`prepare_chat`: one OpenAI chat body -> one generateContent call (never streamed).

Each parameter is mapped, or refused (UnsupportedParameter) when the model would reject it, or dropped
and recorded when the submission allows it (`--drop-unsupported-params`).
"""

from __future__ import annotations

from typing import Any

from ...errors import DROP_HINT, InvalidRequest, UnsupportedParameter
from ...registry import ModelSpec
from ...schemas import ChatRequest, FunctionDef, JsonObjectFormat, ResponseFormat, TextFormat, ToolChoice
from ..base import Prepared, UpstreamCall
from .messages import check_prefill, convert_messages

MAX_STOP_SEQUENCES = 5
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
SAMPLING = (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"))
GATED = (  # (request field, generationConfig key, the Rules flag that allows it)
    ("presence_penalty", "presencePenalty", "penalties"),
    ("frequency_penalty", "frequencyPenalty", "penalties"),
    ("seed", "seed", "seed"),
)
NOOP_EXTRAS = frozenset({"logprobs", "logit_bias", "top_logprobs"})  # fine when falsy
ROUTED_TIERS = ("auto", "default", "flex")  # OpenAI service_tier values the route honours (flex: Gemini's flex tier)


class _Params:
    """Per-parameter decision: raise, or drop and record it (the --drop-unsupported-params switch)."""

    def __init__(self, spec: ModelSpec, drop: bool, prepared: Prepared) -> None:
        self.spec, self.drop, self.prepared = spec, drop, prepared

    def unsupported(self, name: str, what: str | None = None, why: str = "") -> None:
        if self.drop:
            self.prepared.dropped_params.append(name)
            return
        raise UnsupportedParameter(
            f"{what or repr(name)} is not supported by {self.spec.id}{why}; remove it{DROP_HINT}",
            param=name,
        )


def prepare_chat(request: ChatRequest, spec: ModelSpec, *, api_version: str, drop_unsupported: bool) -> Prepared:
    """One generateContent call (never streamed); unsupported parameters raise or are dropped."""
    prepared = Prepared(calls=[])
    params = _Params(spec, drop_unsupported, prepared)
    check_prefill(request.messages, spec)
    system, contents = convert_messages(request.messages, spec, prepared.notes)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t.function) for t in request.tools]}]
    tool_config = _tool_config(request, spec, params)
    if tool_config:
        body["toolConfig"] = tool_config
    if request.parallel_tool_calls is False:
        params.unsupported("parallel_tool_calls", "'parallel_tool_calls: false'", " (Gemini has no switch for it)")
    config = _generation_config(request, spec, params, prepared)
    if config:
        body["generationConfig"] = config
    _check_extras(request, params)
    path = f"/{api_version}/models/{spec.upstream}:generateContent"
    prepared.calls.append(UpstreamCall("POST", path, json=body))
    return prepared


def _declaration(fn: FunctionDef) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": fn.name}
    if fn.description:
        decl["description"] = fn.description
    if fn.parameters is not None:
        decl["parametersJsonSchema"] = fn.parameters  # full JSON Schema; `parameters` is an OpenAPI subset
    return decl


def _tool_config(request: ChatRequest, spec: ModelSpec, params: _Params) -> dict[str, Any] | None:
    choice = request.tool_choice
    names = request.tool_names()
    if choice is None or (choice in ("auto", "none") and not names):
        return None
    if choice in ("auto", "none"):
        return {"functionCallingConfig": {"mode": choice.upper()}}
    forced = _forced_name(choice)
    if not names:
        raise InvalidRequest("tool_choice forces a tool call but 'tools' is empty", param="tool_choice")
    if forced is not None and forced not in names:
        raise InvalidRequest(f"tool_choice names '{forced}', which is not in 'tools'", param="tool_choice")
    config: dict[str, Any] = {"mode": "ANY"}
    if forced is not None:
        config["allowedFunctionNames"] = [forced]
    if not spec.rules.forced_tool_choice:
        params.unsupported("tool_choice", "a forced tool_choice")
        return None
    return {"functionCallingConfig": config}


def _forced_name(choice: ToolChoice) -> str | None:
    """None for "required"; the function name for a named choice."""
    return None if isinstance(choice, str) else choice.function.name


def _generation_config(request: ChatRequest, spec: ModelSpec, params: _Params, prepared: Prepared) -> dict[str, Any]:
    rules = spec.rules
    config: dict[str, Any] = {}
    limit = request.output_limit()
    if limit is not None and rules.max_output_tokens is not None and limit > rules.max_output_tokens:
        name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequest(f"{name} {limit} is above {spec.id}'s output limit of {rules.max_output_tokens}",
                             param=name)
    if limit or rules.default_max_tokens:
        config["maxOutputTokens"] = limit or rules.default_max_tokens
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"Gemini takes at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}",
                             param="stop")
    if stops:
        config["stopSequences"] = stops
    _sampling(request, spec, params, prepared, config)
    if request.seed is not None and not -(2**31) <= request.seed < 2**31:
        raise InvalidRequest(f"seed {request.seed} is out of range for Gemini, whose seed is a 32-bit integer "
                             f"(-2147483648 to 2147483647)", param="seed")
    for name, key, flag in GATED:
        value = getattr(request, name)
        if value is not None and getattr(rules, flag):
            config[key] = value
        elif value is not None:
            params.unsupported(name)
    if request.n is not None and request.n > 1:
        params.unsupported("n", "'n' above 1")
    _response_format(request.response_format, spec, params, config)
    thinking = _thinking(request, spec, params)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _sampling(request: ChatRequest, spec: ModelSpec, params: _Params, prepared: Prepared,
              config: dict[str, Any]) -> None:
    """Models that ignore sampling never see it: dropped and recorded, never an error."""
    given = [(name, key) for name, key in SAMPLING if getattr(request, name) is not None]
    for name, key in given:
        if spec.rules.sampling == "accepted":
            config[key] = getattr(request, name)
        elif spec.rules.sampling == "ignored":
            prepared.dropped_params.append(name)
        else:
            params.unsupported(name)
    if given and spec.rules.sampling == "ignored":
        prepared.notes.append(f"{spec.id} ignores {', '.join(n for n, _ in given)}; not sent")


def _response_format(fmt: ResponseFormat | None, spec: ModelSpec, params: _Params, config: dict[str, Any]) -> None:
    if fmt is None or isinstance(fmt, TextFormat):
        return
    if isinstance(fmt, JsonObjectFormat):
        config["responseMimeType"] = "application/json"
        return
    if not spec.rules.json_schema:
        params.unsupported("response_format", "response_format 'json_schema'")
        return
    config["responseMimeType"] = "application/json"
    config["responseJsonSchema"] = fmt.json_schema.schema_


def _thinking(request: ChatRequest, spec: ModelSpec, params: _Params) -> dict[str, Any] | None:
    """Gemini 3+ takes a level, 2.5 a budget; never both (400)."""
    effort = request.reasoning_effort
    if effort is None:
        return None
    rules = spec.rules
    allowed = rules.reasoning_efforts
    level_none_ok = rules.thinking != "level" or effort != "none" or "minimal" in allowed
    if effort not in allowed or rules.thinking not in ("level", "budget") or not level_none_ok:
        why = f" (allowed: {', '.join(allowed)})" if allowed else " (it has no reasoning control)"
        params.unsupported("reasoning_effort", f"reasoning_effort '{effort}'", why)
        return None
    if rules.thinking == "level":
        return {"thinkingLevel": {"xhigh": "high", "none": "minimal"}.get(effort, effort)}
    return {"thinkingBudget": THINKING_BUDGETS[effort]}


def _check_extras(request: ChatRequest, params: _Params) -> None:
    """Fields ChatRequest does not know (logprobs, logit_bias, ...) have no Gemini counterpart here."""
    for name, value in (request.model_extra or {}).items():
        if value is None or (name in NOOP_EXTRAS and not value):
            continue
        if name == "service_tier" and value in ROUTED_TIERS:
            continue  # not sent as given: the line's route asks for the tier (worker/routes.py)
        params.unsupported(name, why=" (service_tier takes auto, default or flex)" if name == "service_tier" else "")
