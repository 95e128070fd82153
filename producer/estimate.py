"""What a batch will cost, before anything is sent: per model, an expected figure and an upper bound.

- input tokens: estimated from the text (worker/tokens.py: ceil(chars / 4), 1,000 per image);
- output, bound: each request's output limit as it would be sent (max_tokens, or the model's
  default / maximum when the request sets none): the most the provider can bill;
- output, expected: a typical answer (min(limit, 512) tokens), an estimate;
- cost: today's registry prices on those tokens, request by request (size tiers included), with no
  cache discount; `expected` is an estimate, `max` a bound (as far as the input estimate holds).
- route: with a mode (`otb estimate --mode`), each line is priced at the tier of the route it would
  take (worker/routes.py, as at the start of its window) and `saved_expected` says what that saves
  against standard prices; rows are per model and route.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from worker import clock, routes, tokens
from worker.native import goes_native
from worker.pricing import cost, normalize, priced_tier
from worker.providers import ADAPTERS
from worker.providers.base import output_limit
from worker.registry import Registry
from worker.schemas import KIND_BY_URL, ChatRequest, Usage
from worker.settings import Settings

from .batchfile import ParsedBatch


SUMMED = ("requests", "input_tokens", "output_tokens_expected", "output_tokens_max", "cost_expected", "cost_max",
          "saved_expected")


def estimate(parsed: ParsedBatch, registry: Registry, on: dt.date | None = None, *, mode: str = routes.REALTIME,
             window: float | None = None, settings: Settings | None = None) -> dict[str, Any]:
    on = on or clock.today()
    settings = settings or Settings()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for line in parsed.lines:
        body = line.body
        if body is None:
            raise ValueError("an estimate reads the request bodies: read the batch with keep_bodies=True")
        kind = KIND_BY_URL[line.url]
        spec = registry.resolve_for(body["model"], kind)
        if kind == "chat":
            tokens_in = tokens.chat_input_tokens(body)
            limit = _output_limit(body, spec, registry)
            typical = min(limit, tokens.DEFAULT_OUTPUT_GUESS)
        else:
            tokens_in, limit, typical = tokens.embedding_input_tokens(body), 0, 0
        route = routes.NATIVE if goes_native(mode, spec, kind, body, window, settings) else \
            routes.plan(mode, spec, kind, body, settings, window=window, seconds_left=window, meta={}).name
        tier = priced_tier(spec, routes.TIER_OF_ROUTE[route])
        row = rows.setdefault((spec.id, route), {"model": spec.id, "route": route, **dict.fromkeys(SUMMED, 0)})
        row["requests"] += 1
        row["input_tokens"] += tokens_in
        row["output_tokens_expected"] += typical
        row["output_tokens_max"] += limit
        expected = Usage(input_tokens=tokens_in, output_tokens=typical)
        row["cost_expected"] += cost(expected, spec, on, tier).total
        row["cost_max"] += cost(Usage(input_tokens=tokens_in, output_tokens=limit), spec, on, tier).total
        row["saved_expected"] += cost(expected, spec, on).total - cost(expected, spec, on, tier).total
    out = [rows[key] for key in sorted(rows)]
    total = {k: sum(r[k] for r in out) for k in SUMMED}
    for r in [*out, total]:
        for k in ("cost_expected", "cost_max", "saved_expected"):
            r[k] = format(normalize(Decimal(r[k])), "f")
    return {"schema": "otb.estimate/1", "priced_on": on.isoformat(), "mode": mode, "rows": out, "total": total,
            "invalid_lines": len(parsed.errors),
            "kinds": {"input_tokens": "estimate", "output_tokens_expected": "estimate", "output_tokens_max": "bound",
                      "cost_expected": "estimate", "cost_max": "bound", "saved_expected": "estimate"}}


def _output_limit(body: dict[str, Any], spec: Any, registry: Registry) -> int:
    """The output limit the request would be sent with (the adapter's own translation decides)."""
    request = ChatRequest.model_validate(body)
    adapter = ADAPTERS[spec.provider]
    prepared = adapter.prepare_chat(request, spec, api_version=registry.api_version(spec.provider), drop_unsupported=True)
    return output_limit(prepared, spec.rules.max_output_tokens)


