"""Cost summaries, pure over result lines: every figure is a sum of the lines' own decimal strings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.pricing import normalize
from worker.schemas import COST_FIELDS

TOKEN_BUCKETS = ("input_tokens", "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens")


@dataclass
class Row:
    key: str
    requests: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_BUCKETS, 0))
    cost: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(COST_FIELDS, Decimal(0)))

    def add(self, line: dict[str, Any]) -> None:
        meta = line.get("meta") or {}
        self.requests += 1
        outcome = meta.get("outcome", "errored")
        setattr(self, outcome, getattr(self, outcome) + 1)
        for name, value in (meta.get("usage") or {}).items():
            if name in self.tokens:
                self.tokens[name] += int(value)
        for name in COST_FIELDS:
            self.cost[name] += Decimal(line["cost"][name])

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "errored": self.errored,
            "canceled": self.canceled,
            "tokens": dict(self.tokens),
            "cost": {k: format(normalize(v), "f") for k, v in self.cost.items()},
        }


def by_model(lines: Iterable[dict[str, Any] | None]) -> tuple[list[Row], Row]:
    """Rows per billed model (requested id shown when Google re-routed it) and a totals row."""
    rows: dict[str, Row] = {}
    total = Row("total")
    for line in lines:
        if line is None:
            continue
        meta = line.get("meta") or {}
        requested = meta.get("model") or "(invalid line)"
        billed = meta.get("billed_model") or requested
        key = billed if billed == requested else f"{requested} -> {billed}"
        rows.setdefault(key, Row(key)).add(line)
        total.add(line)
    return sorted(rows.values(), key=lambda r: r.key), total


def error_counts(lines: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        if line is None or (line.get("meta") or {}).get("outcome") == "succeeded":
            continue
        code = (line.get("error") or {}).get("code") or (
            ((line.get("response") or {}).get("body") or {}).get("error", {}).get("code")
        )
        counts[code or "unknown"] = counts.get(code or "unknown", 0) + 1
    return dict(sorted(counts.items()))


def render_table(rows: list[Row], total: Row) -> str:
    head = ["model", "reqs", "ok", "err", "input", "cache_r", "cache_w", "output", "cost USD"]
    body = []
    for r in [*rows, total]:
        t = r.tokens
        body.append([
            r.key, str(r.requests), str(r.succeeded), str(r.errored), str(t["input_tokens"]),
            str(t["cache_read_tokens"]), str(t["cache_write_5m_tokens"] + t["cache_write_1h_tokens"]),
            f"{t['output_tokens']}" + (f" ({t['reasoning_tokens']} r)" if t["reasoning_tokens"] else ""),
            format(normalize(r.cost["total"]), "f"),
        ])
    return format_columns(head, body, separator_before_last=True)


def format_columns(head: list[str], rows: list[list[str]], *, separator_before_last: bool = False,
                   text_columns: frozenset[int] = frozenset({0})) -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in text_columns else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(head), "  ".join("-" * w for w in widths)]
    for i, row in enumerate(rows):
        if separator_before_last and i == len(rows) - 1:
            out.append("  ".join("-" * w for w in widths))
        out.append(fmt(row))
    return "\n".join(out)
