"""A self-contained HTML page for an "otb.report/1" report: opens offline, prints cleanly.

No external assets of any kind (inline CSS and inline SVG only), so the file can be mailed or
archived and still render identically. Costs are shown exactly as the report's decimal strings;
floats are used only for bar lengths and axis scaling, never for a displayed amount.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from html import escape
from typing import Any

# 16 mutually distinct colours (Tableau 10, then darker/lighter hues that don't echo it).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1d3f6e", "#b5cf6b", "#8c1c13", "#a0cbe8", "#6b3fa0", "#3d3d3d")

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#222;margin:20px auto;max-width:1400px;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}.meta b{color:#222;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}.card .k{color:#666;font-size:12px}
svg{display:block;width:100%;height:auto;font-family:inherit}svg text{fill:#333}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0 0 60px;font-size:12px}
.sw{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.sw,svg rect{-webkit-print-color-adjust:exact;print-color-adjust:exact}
table{border-collapse:collapse;font-size:11.5px;margin:4px 0}
th,td{padding:3px 5px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f4f4f4;font-weight:600;white-space:normal;vertical-align:bottom}th.t,td.t{text-align:left}
th[colspan]{text-align:center}.b{border-left:1px solid #ccc}
td{font-variant-numeric:tabular-nums}tr.tot td{font-weight:600;border-top:2px solid #999}
.wrap{overflow-x:auto}.nodata{color:#888;font-style:italic;margin:8px 0}
@page{size:A4 landscape;margin:10mm}
@media print{body{margin:0;max-width:none;font-size:11px}.wrap{overflow:visible}
 h2{break-after:avoid}.keep,tr{break-inside:avoid}table{font-size:9.5px}th,td{padding:2px 4px}}
"""


def _e(value: Any) -> str:
    """Escape anything from the report: ids, tag values and codes are untrusted text."""
    return escape("" if value is None else str(value), quote=True)


def _f(amount: Any) -> float:
    """Float of a decimal string, for geometry only (never displayed)."""
    try:
        value = float(amount)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _n(value: Any) -> str:
    """Integer counts with thousands separators: easier to read, still exact."""
    return f"{value:,}" if isinstance(value, int) else _e(value)


def model_colours(series: dict[str, Any]) -> dict[str, str]:
    """One colour per model, biggest spender first, shared by both charts and the legend."""
    by_model = sorted(series.get("cost_by_model") or [], key=lambda r: -_f(r.get("cost")))
    models = [str(r.get("model")) for r in by_model]
    models += sorted({str(r.get("model")) for r in series.get("cost_by_day_model") or []} - set(models))
    return {m: PALETTE[i] if i < len(PALETTE) else f"hsl({(i * 137.5) % 360:.0f},55%,55%)"
            for i, m in enumerate(models)}


def _days(points: list[dict[str, Any]]) -> list[str]:
    """Every day from first to last, so gaps show as empty slots rather than vanishing."""
    days = sorted({str(p.get("day")) for p in points})
    try:
        first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    except ValueError:
        return days
    span = (last - first).days
    if span > 400:
        return days
    return [(first + dt.timedelta(d)).isoformat() for d in range(span + 1)]


def _ticks(top: float) -> list[Decimal]:
    """About five round axis ticks (1, 2 or 5 x 10^k) covering top, as exact Decimals."""
    exp = math.floor(math.log10(top / 5))
    mag = Decimal(1).scaleb(exp)
    step = next(m * mag for m in (1, 2, 5, 10) if float(m * mag) * 5 >= top)
    count = math.ceil(top / float(step) - 1e-9)
    return [step * i for i in range(max(count, 1) + 1)]


def _money(value: Decimal) -> str:
    return "$" + format(value.normalize() if value else Decimal(0), "f")


def chart_by_day(series: dict[str, Any], colours: dict[str, str]) -> str:
    """Chart 1: stacked bars, one per day, one segment per model with positive cost."""
    points = [p for p in series.get("cost_by_day_model") or [] if _f(p.get("cost")) > 0]
    if not points:
        return '<p class="nodata">no data</p>'
    days = _days(points)
    cells: dict[str, dict[str, Any]] = {d: {} for d in days}
    for p in points:
        cells.setdefault(str(p.get("day")), {})[str(p.get("model"))] = p.get("cost")
    totals = {d: sum(_f(c) for c in cells[d].values()) for d in days}
    ticks = _ticks(max(totals.values()))
    top = float(ticks[-1])
    width, height, left, right, pad_top, bottom = 960, 380, 70, 10, 12, 70
    plot_w, plot_h = width - left - right, height - pad_top - bottom
    slot = plot_w / len(days)
    bar = max(min(slot * 0.72, 60), 2)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="cost per day by model">']
    for t in ticks:
        y = pad_top + plot_h - float(t) / top * plot_h
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_money(t)}</text>')
    label_every = math.ceil(len(days) / 20)
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = pad_top + plot_h
        for model in colours:
            cost = cells[day].get(model)
            if cost is None:
                continue
            h = _f(cost) / top * plot_h
            y -= h
            out.append(f'<rect class="seg" x="{x:.1f}" y="{y:.2f}" width="{bar:.1f}" height="{h:.2f}" '
                       f'fill="{colours[model]}"><title>{_e(day)} · {_e(model)}: ${_e(cost)}</title></rect>')
        if i % label_every == 0:
            cx, ly = x + bar / 2, pad_top + plot_h + 14
            out.append(f'<text x="{cx:.1f}" y="{ly}" font-size="11" text-anchor="end" '
                       f'transform="rotate(-40 {cx:.1f} {ly})">{_e(day)}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{pad_top + plot_h}" y2="{pad_top + plot_h}" stroke="#888"/>'
               f'<text x="14" y="{pad_top + plot_h / 2:.0f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {pad_top + plot_h / 2:.0f})">cost (USD)</text></svg>')
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{_e(m)}</span>' for m, c in colours.items())
    return "".join(out) + f'<div class="legend">{legend}</div>'


def chart_by_model(series: dict[str, Any], colours: dict[str, str]) -> str:
    """Chart 2: horizontal bars per model, labelled with the exact cost string."""
    rows = sorted(series.get("cost_by_model") or [], key=lambda r: -_f(r.get("cost")))
    if not rows:
        return '<p class="nodata">no data</p>'
    top = max(_f(r.get("cost")) for r in rows) or 1.0
    label_w = min(max(len(str(r.get("model"))) for r in rows) * 7 + 16, 380)
    value_w = max(len(str(r.get("cost"))) for r in rows) * 7 + 20
    width, row_h = 960, 26
    bar_max = width - label_w - value_w
    out = [f'<svg class="chart" viewBox="0 0 {width} {len(rows) * row_h + 8}" role="img" aria-label="cost by model">']
    for i, r in enumerate(rows):
        model, cost = str(r.get("model")), r.get("cost")
        y = 4 + i * row_h
        w = max(_f(cost) / top * bar_max, 0)
        shown = model if len(model) * 7 + 16 <= label_w else model[: (label_w - 16) // 7 - 1] + "…"
        out.append(f'<text x="{label_w - 8}" y="{y + 16}" font-size="12" text-anchor="end">'
                   f'<title>{_e(model)}</title>{_e(shown)}</text>'
                   f'<rect class="hbar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                   f'fill="{colours.get(model, "#999")}"/>'
                   f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12">${_e(cost)}</text>')
    return "".join(out) + "</svg>"


_SEP = ' class="b"'  # left rule where the tokens and the cost column groups start


def _group_label(key: str) -> str:
    return key.replace("tag:", "tag ") if key.startswith("tag:") else key


def rows_table(report: dict[str, Any]) -> str:
    """The CLI table's columns, plus a totals row; costs are the report's own strings."""
    group_by = [str(g) for g in report.get("group_by") or []]
    rows = report.get("rows") or []
    if not rows:
        return '<p class="nodata">no data</p>'
    heads = ["requests", "ok", "err", "uncached input", "cache read", "cache write", "output (reasoning)",
             "input", "cache_read", "cache_write", "output", "total"]

    def cells(r: dict[str, Any]) -> str:
        t, c = r.get("tokens") or {}, r.get("cost") or {}
        out = _n(t.get("output", 0)) + (f" ({_n(t['reasoning'])} r)" if t.get("reasoning") else "")
        err = sum(r.get(k, 0) for k in ("errored", "canceled", "expired"))  # as the CLI table counts it
        nums = [_n(r.get("requests", 0)), _n(r.get("succeeded", 0)), _n(err),
                _n(t.get("input", 0)), _n(t.get("cache_read", 0)), _n(t.get("cache_write", 0)), out]
        nums += [_e(c.get(k, "")) for k in ("input", "cache_read", "cache_write", "output", "total")]
        return "".join(f'<td{_SEP if i in (3, 7) else ""}>{v}</td>' for i, v in enumerate(nums))

    def group(r: dict[str, Any]) -> str:
        g = r.get("group") or {}
        return "".join(f'<td class="t">{_e(g.get(k, "—"))}</td>' for k in group_by) or '<td class="t">all</td>'

    head = "".join(f'<th class="t" rowspan="2">{_e(_group_label(g))}</th>' for g in group_by) or '<th rowspan="2"></th>'
    head += '<th rowspan="2">requests</th><th rowspan="2">ok</th><th rowspan="2" title="errored + canceled + expired">err</th>'
    head += '<th class="b" colspan="4">tokens</th><th class="b" colspan="5">cost (USD)</th></tr><tr>'
    head += "".join(f'<th{_SEP if i in (3, 7) else ""}>{h}</th>' for i, h in enumerate(heads) if i >= 3)
    body = "".join(f"<tr>{group(r)}{cells(r)}</tr>" for r in rows)
    total = report.get("total") or {}
    # In the body, not <tfoot>: print engines repeat a tfoot on every page, which reads as a page subtotal.
    foot = f'<tr class="tot"><td class="t" colspan="{max(len(group_by), 1)}">total</td>{cells(total) if total else ""}</tr>'
    return (f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}{foot}</tbody>'
            "</table></div>")


def errors_table(errors: dict[str, Any]) -> str:
    if not errors:
        return '<p class="nodata">no errors</p>'
    body = "".join(f'<tr><td class="t">{_e(code)}</td><td>{_n(n)}</td></tr>'
                   for code, n in sorted(errors.items(), key=lambda kv: (-_f(kv[1]), str(kv[0]))))
    return f'<table><thead><tr><th class="t">error code</th><th>requests</th></tr></thead><tbody>{body}</tbody></table>'


def rerouted_table(rerouted: list[dict[str, Any]]) -> str:
    if not rerouted:
        return '<p class="nodata">no re-routed requests</p>'
    body = "".join(f'<tr><td class="t">{_e(r.get("model"))}</td><td class="t">→ {_e(r.get("billed_model"))}</td>'
                   f'<td>{_n(r.get("requests", 0))}</td></tr>' for r in rerouted)
    return ('<table><thead><tr><th class="t">requested id</th><th class="t">model billed</th><th>requests</th>'
            f"</tr></thead><tbody>{body}</tbody></table>")


def _filters(filters: dict[str, Any]) -> str:
    """Filters in words, so a printed page says exactly what it covers."""
    parts = [f"<b>{k}</b> {_e(filters[k])}" for k in ("batch", "model", "provider", "since", "until") if filters.get(k)]
    parts += [f"<b>tag</b> {_e(k)}={_e(v)}" for k, v in sorted((filters.get("tags") or {}).items())]
    return " · ".join(parts) or "all requests (no filters)"


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; write it to a .html file and open it in any browser."""
    series = report.get("series") or {}
    colours = model_colours(series)
    total = report.get("total") or {}
    cost = (total.get("cost") or {}).get("total", "0")
    cards = [("total cost (USD)", "$" + _e(cost)), ("requests", _n(total.get("requests", 0))),
             ("succeeded", _n(total.get("succeeded", 0))), ("errored", _n(total.get("errored", 0)))]
    if total.get("canceled") or total.get("expired"):
        cards.append(("canceled / expired", f'{_n(total.get("canceled", 0))} / {_n(total.get("expired", 0))}'))
    cards_html = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
    group_by = ", ".join(_e(g) for g in report.get("group_by") or []) or "—"
    tz = _e(report.get("timezone") or "UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cost report · {_e(report.get("generated_at"))}</title>
<style>{CSS}</style></head><body>
<h1>Cost report</h1>
<div class="meta">{_filters(report.get("filters") or {})}</div>
<div class="meta">generated <b>{_e(report.get("generated_at"))}</b> · days in <b>{tz}</b> · grouped by <b>{group_by}</b>
 · schema {_e(report.get("schema"))}</div>
<div class="cards">{cards_html}</div>
<section class="keep"><h2>Cost per day, by model</h2>{chart_by_day(series, colours)}</section>
<section class="keep"><h2>Cost by model</h2>{chart_by_model(series, colours)}</section>
<h2>Breakdown</h2>{rows_table(report)}
<h2>Errors by code</h2>{errors_table(report.get("errors") or {})}
<h2>Re-routed models</h2>{rerouted_table(report.get("rerouted") or [])}
</body></html>
"""
