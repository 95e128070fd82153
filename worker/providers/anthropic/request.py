"""`prepare_chat`: one OpenAI chat body -> one Messages call, parameter by parameter.

What a model accepts comes from `spec.rules`; the `anthropic-version` sent decides whether sampling fields exist
at all (2026-10-21 removed them). A parameter the model would reject is refused up front (UnsupportedParameter)
so a request fails fast and names the fix, or is dropped and recorded when the submission allows it.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import InvalidRequest
from ...registry import ModelSpec
from ...schemas import ChatRequest, JsonObjectFormat, TextFormat, Tool
from ..base import Prepared, UpstreamCall
from .messages import Block, Ctx, check_breakpoints, convert_messages, keep_cache

MESSAGES_PATH = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096
SAMPLING_REMOVED_IN = "2026-10-21"  # first anthropic-version without temperature/top_p/top_k
SAMPLING = ("temperature", "top_p", "top_k")
# reasoning_effort -> budget_tokens on "budget" models (1024 is the API minimum).
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
MIN_BUDGET = 1024  # Anthropic's smallest budget_tokens
# OpenAI-only request fields that arrive as pydantic extras, with why Anthropic can't honour them.
OPENAI_ONLY = {"logit_bias": "Anthropic has no logit bias", "logprobs": "Anthropic returns no logprobs",
               "top_logprobs": "Anthropic returns no logprobs",
               "service_tier": "Anthropic has no flex tier (Claude at half price is the Message Batches API); "
                               "only 'auto' and 'default' are accepted"}
STANDARD_TIERS = ("auto", "default")  # OpenAI service_tier values that mean the standard tier here
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def prepare_chat(request: ChatRequest, spec: ModelSpec, *, api_version: str, drop_unsupported: bool) -> Prepared:
    """Translate one OpenAI chat body into a single Messages call (never streamed)."""
    ctx = Ctx(spec, api_version, drop_unsupported)
    _refuse_openai_only(request, ctx)
    system, messages = convert_messages(request.messages, ctx)
    body: dict[str, Any] = {"model": spec.upstream, "max_tokens": _max_tokens(request, spec)}
    if system:
        body["system"] = system
    body["messages"] = messages
    stops = _stop_sequences(request, ctx)
    if stops:
        body["stop_sequences"] = stops
    thinking_on = _apply_reasoning(body, request, ctx)
    _apply_sampling(body, request, ctx, thinking_on)
    _apply_tools(body, request, ctx, thinking_on)
    _apply_response_format(body, request, ctx)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    check_breakpoints(body)
    headers = {"anthropic-version": api_version, "content-type": "application/json"}
    call = UpstreamCall("POST", MESSAGES_PATH, json=body, headers=headers)
    return Prepared(calls=[call], dropped_params=ctx.dropped, notes=ctx.notes)


def _refuse_openai_only(request: ChatRequest, ctx: Ctx) -> None:
    """OpenAI parameters with no Anthropic meaning; a penalty of 0 is OpenAI's default and changes nothing."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name) not in (None, 0):
            ctx.unsupported(name, "Anthropic has no sampling penalties")
    if request.seed is not None:
        ctx.unsupported("seed", "Anthropic has no seed")
    if request.n not in (None, 1):
        ctx.unsupported("n", "Anthropic returns one choice per request")
    for name, value in (request.model_extra or {}).items():
        if value is None or value is False or (isinstance(value, (dict, list)) and not value):
            continue  # explicitly unset
        if name == "service_tier" and value in STANDARD_TIERS:
            continue  # the standard tier: how every Messages call runs (the batch's route decides the rest)
        ctx.unsupported(name, OPENAI_ONLY.get(name, "not a parameter the Anthropic adapter knows"))


def _stop_sequences(request: ChatRequest, ctx: Ctx) -> list[str]:
    """Anthropic 400s on a stop sequence that is empty or only whitespace ("\\n" is a common OpenAI one)."""
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    blank = [s for s in stops if not s.strip()]
    if blank:
        ctx.unsupported("stop", "Anthropic refuses stop sequences that are empty or only whitespace")
        ctx.notes.append(f"stop sequences {json.dumps(blank)} not sent: Anthropic refuses blank ones")
    return [s for s in stops if s.strip()]


def _max_tokens(request: ChatRequest, spec: ModelSpec) -> int:
    """Anthropic requires max_tokens: the request's, else the model default, never above the model limit."""
    limit = spec.rules.max_output_tokens
    requested = request.output_limit()
    if requested is None:
        default = spec.rules.default_max_tokens or DEFAULT_MAX_TOKENS
        return min(default, limit) if limit else default
    if limit is not None and requested > limit:
        name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequest(f"{name} {requested} is above the output limit of {spec.id} ({limit} tokens)", param=name)
    return requested

def _apply_reasoning(body: dict[str, Any], request: ChatRequest, ctx: Ctx) -> bool:
    """reasoning_effort -> thinking (+ effort); returns whether thinking will be on."""
    effort, rules = request.reasoning_effort, ctx.spec.rules
    if effort is not None and rules.thinking not in ("adaptive", "budget"):
        ctx.unsupported("reasoning_effort", "the model has no thinking control")
        effort = None
    elif effort is not None and effort not in rules.reasoning_efforts:
        allowed = ", ".join(rules.reasoning_efforts)
        ctx.unsupported("reasoning_effort", f"reasoning_effort '{effort}' is not accepted; allowed values: {allowed}")
        effort = None
    if effort is None:  # the model's default; an adaptive model that cannot switch thinking off always thinks
        return rules.thinking == "adaptive" and "none" not in rules.reasoning_efforts
    if effort == "none":
        if rules.thinking == "adaptive":
            body["thinking"] = {"type": "disabled"}
        return False
    if rules.thinking == "adaptive":
        body["thinking"] = {"type": "adaptive"}
        body.setdefault("output_config", {})["effort"] = "low" if effort == "minimal" else effort
        return True
    _apply_budget(body, BUDGETS[effort], ctx, explicit=request.output_limit() is not None)
    return True


def _apply_budget(body: dict[str, Any], budget: int, ctx: Ctx, *, explicit: bool) -> None:
    """budget_tokens must stay below max_tokens.

    A max_tokens the caller gave is a hard cap on thinking + answer (OpenAI semantics, and the
    caller's cost bound): the budget shrinks to half of it. Without one, the default max_tokens is
    the visible part and the budget comes on top.
    """
    if explicit:
        cap = body["max_tokens"]
        if cap <= MIN_BUDGET:
            raise InvalidRequest(
                f"max_tokens {cap} leaves no room for thinking on {ctx.spec.id} (it thinks with a token budget of at "
                f"least {MIN_BUDGET}); raise max_tokens above {MIN_BUDGET} or remove reasoning_effort",
                param="max_tokens")
        shrunk = max(MIN_BUDGET, min(budget, cap // 2))
        if shrunk != budget:
            ctx.notes.append(f"thinking budget {budget} reduced to {shrunk} to fit max_tokens {cap}")
        body["thinking"] = {"type": "enabled", "budget_tokens": shrunk}
        return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    limit = ctx.spec.rules.max_output_tokens
    visible = body["max_tokens"]
    raised = min(budget + visible, limit) if limit else budget + visible
    if raised <= budget:
        raise InvalidRequest(f"reasoning_effort needs a thinking budget of {budget} tokens, which does not fit the "
                             f"output limit of {ctx.spec.id} ({limit} tokens)", param="reasoning_effort")
    ctx.notes.append(f"max_tokens raised from {visible} to {raised} to hold a thinking budget of {budget}")
    body["max_tokens"] = raised


def _apply_sampling(body: dict[str, Any], request: ChatRequest, ctx: Ctx, thinking_on: bool) -> None:
    given = {name: getattr(request, name) for name in SAMPLING if getattr(request, name) is not None}
    sampling, removed = ctx.spec.rules.sampling, ctx.api_version >= SAMPLING_REMOVED_IN
    if given and (removed or sampling == "rejected"):
        why = (f"anthropic-version {ctx.api_version} rejects sampling parameters" if removed
               else "the model rejects non-default sampling parameters")
        for name in given:
            ctx.unsupported(name, why)
        return
    if given and sampling == "ignored":  # dropped whatever the submission says: the model would not use them
        ctx.dropped += [n for n in given if n not in ctx.dropped]
        ctx.notes.append(f"{', '.join(given)} dropped: {ctx.spec.id} ignores sampling parameters")
        return
    if given.get("temperature", 0) > 1:
        raise InvalidRequest(f"temperature {given['temperature']} is above 1, the Anthropic maximum (range 0-1)",
                             param="temperature")
    for name in list(given):  # what Anthropic 400s on: temperature/top_k with thinking, top_p < 0.95 with thinking
        if thinking_on and (name != "top_p" or given[name] < 0.95):
            ctx.unsupported(name, "not with thinking on" if name != "top_p" else "only 0.95-1 with thinking on")
            del given[name]
    if "temperature" in given and "top_p" in given:
        ctx.unsupported("top_p", "temperature and top_p cannot both be specified")
        del given["top_p"]
    body.update(given)


def _apply_tools(body: dict[str, Any], request: ChatRequest, ctx: Ctx, thinking_on: bool) -> None:
    """tools, then tool_choice (+ parallel_tool_calls); a refused forced choice drops to auto."""
    if request.tools:
        body["tools"] = [_tool(t, f"tools[{k}]", ctx) for k, t in enumerate(request.tools)]
    choice = _map_tool_choice(request)
    if choice is None and request.parallel_tool_calls is False and request.tools:
        choice = {"type": "auto"}
    if choice is None:
        return
    if choice["type"] in ("any", "tool"):
        why = _forced_refusal(body, ctx, thinking_on)
        if why:
            ctx.unsupported("tool_choice", why)
            choice = {"type": "auto"}
    if request.parallel_tool_calls is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    body["tool_choice"] = choice


def _tool(tool: Tool, where: str, ctx: Ctx) -> Block:
    """An OpenAI function -> an Anthropic tool, whose input_schema must be an object schema with its `type`."""
    fn = tool.function
    out: Block = {"name": fn.name}
    if fn.description:
        out["description"] = fn.description
    schema = fn.parameters or {"type": "object", "properties": {}}
    if "type" not in schema:  # OpenAI tolerates it; Anthropic: "type: Field required"
        schema = {"type": "object", **schema}
        ctx.notes.append(f"{where}: parameters sent with type 'object' (Anthropic requires it)")
    if schema["type"] != "object":
        raise InvalidRequest(f"{where}.function.parameters must be an object schema (type 'object'): Anthropic "
                             "passes tool input only as an object", param=f"{where}.function.parameters")
    out["input_schema"] = schema
    return keep_cache(out, tool.cache_control, where)


def _forced_refusal(body: dict[str, Any], ctx: Ctx, thinking_on: bool) -> str | None:
    """Why a forced choice would 400. Default thinking (newer models think unasked) is switched off if it can be."""
    rules = ctx.spec.rules
    if not rules.forced_tool_choice:
        return "forced tool use ('required' or a named function) is refused; only 'auto' and 'none' work"
    if rules.forced_tool_choice_with_thinking:
        return None
    if "thinking" not in body and rules.thinking == "adaptive" and "none" in rules.reasoning_efforts:
        body["thinking"] = {"type": "disabled"}
        ctx.notes.append("thinking disabled explicitly: the model refuses a forced tool_choice while thinking")
    elif thinking_on:
        return "forced tool use is refused while thinking is on; use 'auto' or reasoning_effort 'none'"
    return None


def _map_tool_choice(request: ChatRequest) -> Block | None:
    tc = request.tool_choice
    if tc is None:
        return None
    names = set(request.tool_names())
    if isinstance(tc, str):
        mapped = {"auto": "auto", "none": "none", "required": "any"}[tc]
        if mapped == "any" and not names:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        return {"type": mapped} if names else None
    name = tc.function.name
    if name not in names:
        raise InvalidRequest(f"tool_choice names '{name}', which is not in tools", param="tool_choice")
    return {"type": "tool", "name": name}


def _apply_response_format(body: dict[str, Any], request: ChatRequest, ctx: Ctx) -> None:
    """json_schema -> output_config.format (structured output); text is the default.

    json_object is not sent: Anthropic has no JSON mode, and the only schema for "any object" it would take,
    {"type": "object", "additionalProperties": false}, admits nothing but {}.
    """
    rf = request.response_format
    if rf is None or isinstance(rf, TextFormat):
        return
    if isinstance(rf, JsonObjectFormat):
        ctx.dropped += [] if "response_format" in ctx.dropped else ["response_format"]
        ctx.notes.append("response_format json_object not sent: Anthropic has no JSON mode (structured output "
                         "needs a schema); ask for JSON in the prompt, or send a json_schema")
        return
    if not ctx.spec.rules.json_schema:
        ctx.unsupported("response_format", "the model has no structured output")
        return
    closed: list[str] = []
    schema = _closed(rf.json_schema.schema_, "schema", closed)
    if closed:
        ctx.notes.append(f"response_format: additionalProperties: false set on {len(closed)} object schemas "
                         f"({', '.join(closed)}): Anthropic's structured output requires it; answers still fit "
                         "your schema")
    body.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}


def _closed(schema: Any, where: str, closed: list[str]) -> Any:
    """A copy of `schema` with additionalProperties: false on every object schema, which Anthropic's structured
    output requires (a 400 otherwise, whatever OpenAI's `strict` says). Closing only narrows what the model may
    answer, so its answers still validate against the caller's schema; `closed` collects where it was added."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kind = out.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or ("properties" in out and not kind):
        _close(out, where, closed)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(sub, f"{where}.{key}.{name}", closed) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(sub, f"{where}.{key}[{k}]", closed) for k, sub in enumerate(out[key])]
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"], f"{where}.items", closed)
    return out


def _close(obj: dict[str, Any], where: str, closed: list[str]) -> None:
    extra = obj.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        raise InvalidRequest(f"response_format {where}: an object whose additionalProperties is a schema (a map of "
                             "arbitrary keys) cannot be sent to Anthropic, whose structured output requires "
                             "additionalProperties: false on every object; list the keys as properties",
                             param="response_format")
    if extra is not False:
        obj["additionalProperties"] = False
        closed.append(where)
