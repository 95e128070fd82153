"""A report as text: the terminal table (`otb report`, `otb run`) and CSV; `format_columns` is the
plain-text table every command's listing uses."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from collections.abc import Iterable
from typing import Any

from .model import COSTS, OUTCOMES, TOKENS

HEAD = ["reqs", "ok", "err", "input", "cache_read", "cache_write", "output", "$ input", "$ cache_read",
        "$ cache_write", "$ output", "$ total"]


ENDED = ("canceled", "expired")  # outcomes that are not errors: shown in their own columns when any occurred


def _cells(r: dict[str, Any], ended: list[str]) -> list[str]:
    t, c = r["tokens"], r["cost"]
    output = f"{t['output']}" + (f" ({t['reasoning']} r)" if t["reasoning"] else "")
    return [str(r["requests"]), str(r["succeeded"]), str(r["errored"]), *(str(r[k]) for k in ended),
            str(t["input"]), str(t["cache_read"]), str(t["cache_write"]), output,
            c["input"], c["cache_read"], c["cache_write"], c["output"], c["total"]]


def render_table(report: dict[str, Any]) -> str:
    groups = report["group_by"]
    ended = [k for k in ENDED if report["total"][k]]
    body = [[str(r["group"][g]) for g in groups] + _cells(r, ended) for r in report["rows"]]
    body.append(["total"] + [""] * (len(groups) - 1) + _cells(report["total"], ended))
    out = [format_columns(groups + HEAD[:3] + ended + HEAD[3:], body, separator_before_last=True,
                          text_columns=frozenset(range(len(groups))))]
    if Decimal(report["total"].get("saved", 0)):
        out.append(f"saved vs real time: ${report['total']['saved']} (what these answers would have cost at "
                   "standard prices, less what they cost)")
    if report["errors"]:
        out.append("errors: " + ", ".join(f"{code} x{n}" for code, n in report["errors"].items()))
    for r in report["rerouted"]:
        out.append(f"re-routed: {r['model']} was served and billed as {r['billed_model']} ({r['requests']} requests)")
    return "\n".join(out)


def render_csv(report: dict[str, Any]) -> str:
    """One row per group and a total row; plain numbers and decimal strings, no currency signs."""
    groups = report["group_by"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(groups + ["requests", *OUTCOMES, *(f"{n}_tokens" for n, _ in TOKENS), "saved_usd",
                         *(f"cost_{n}_usd" for n in (*COSTS, "total"))])
    for r in [*report["rows"], {"group": {g: "total" if i == 0 else "" for i, g in enumerate(groups)}, **report["total"]}]:
        w.writerow([r["group"][g] for g in groups] + [r["requests"], *(r[o] for o in OUTCOMES),
                                                       *(r["tokens"][n] for n, _ in TOKENS), r.get("saved", "0"),
                                                       *(r["cost"][n] for n in (*COSTS, "total"))])
    return buf.getvalue()


def format_columns(head: list[str], rows: Iterable[list[str]], *, separator_before_last: bool = False,
                   text_columns: frozenset[int] = frozenset({0})) -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    rows = list(rows)
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
