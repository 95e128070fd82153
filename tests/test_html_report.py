"""The HTML report is one self-contained, escaped page whose figures are the report's exact strings."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from producer.report import render_html

VOID = {"meta", "br", "hr", "img", "input", "link", "line", "rect", "col", "wbr"}
EVIL = "evil/<script>alert(1)</script>"


def sample_report() -> dict[str, Any]:
    """A report as the CLI emits it, with awkward values: long exact decimals, a zero-cost pair, an evil id."""
    series_day = [
        {"day": "2026-11-25", "model": "google/gemini-3-flash", "cost": "0.5"},
        {"day": "2026-11-25", "model": "anthropic/claude-haiku-5-5", "cost": "0.012"},
        {"day": "2026-11-26", "model": "anthropic/claude-haiku-5-5", "cost": "0.10000000000000000001"},
        {"day": "2026-11-26", "model": EVIL, "cost": "0"},  # zero cost: no bar segment
        {"day": "2026-11-27", "model": EVIL, "cost": "0.00184"},
    ]
    row = {"requests": 10, "succeeded": 9, "errored": 1, "canceled": 0, "expired": 0,
           "tokens": {"input": 1200, "cache_read": 800, "cache_write": 0, "output": 400, "reasoning": 150},
           "cost": {"input": "0.0006", "cache_read": "0.00004", "cache_write": "0", "output": "0.0012", "total": "0.00184"}}
    return {
        "schema": "otb.report/1", "generated_at": "2026-11-27T14:00:00+00:00", "timezone": "UTC",
        "filters": {"batch": "batch_x", "model": None, "provider": None, "tags": {"team": "<b>fin</b>"},
                    "since": None, "until": None},
        "group_by": ["day", "model"],
        "rows": [{"group": {"day": "2026-11-27", "model": EVIL}, **row},
                 {"group": {"day": "2026-11-26", "model": "anthropic/claude-haiku-5-5"}, **row,
                  "cost": {**row["cost"], "total": "1234567.123456789012345678"}}],
        "total": {**row, "requests": 20, "cost": {**row["cost"], "total": "1234567.125296789012345678"}},
        "errors": {"model_not_found": 2, "<bad&code>": 1},
        "rerouted": [{"model": "google/gemini-3.5-flash", "billed_model": "google/gemini-3.6-flash", "requests": 3}],
        "series": {"cost_by_day_model": series_day,
                   "cost_by_model": [{"model": "google/gemini-3-flash", "cost": "0.5"},
                                     {"model": "anthropic/claude-haiku-5-5", "cost": "0.11200000000000000001"},
                                     {"model": EVIL, "cost": "0.00184"}]},
    }


def empty_report() -> dict[str, Any]:
    zero = {"requests": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0,
            "tokens": dict.fromkeys(("input", "cache_read", "cache_write", "output", "reasoning"), 0),
            "cost": dict.fromkeys(("input", "cache_read", "cache_write", "output", "total"), "0")}
    return {"schema": "otb.report/1", "generated_at": "2026-11-27T14:00:00+00:00", "timezone": "UTC",
            "filters": {"batch": None, "model": None, "provider": None, "tags": {}, "since": None, "until": None},
            "group_by": [], "rows": [], "total": zero, "errors": {}, "rerouted": [],
            "series": {"cost_by_day_model": [], "cost_by_model": []}}


class TagBalance(HTMLParser):
    """Collects tags so a test can insist on one well-nested document."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.seen: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def parse(page: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    return parser


def test_one_well_formed_document() -> None:
    page = render_html(sample_report())
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1 and page.count("</html>") == 1
    tags = parse(page)
    assert tags.problems == [] and tags.stack == []
    assert tags.seen.count("svg") == 2 and tags.seen.count("table") == 3


def test_no_external_assets() -> None:
    """Fails as soon as anything would be fetched: the page must work offline and be archivable as is."""
    for report in (sample_report(), empty_report()):
        page = render_html(report).lower()
        for needle in ("http://", "https://", "<script", "<link", "src=", "href=", "url(", "@import", "//fonts"):
            assert needle not in page, needle
        assert not re.search(r"<(img|iframe|object|embed|video|audio|image|use)\b", page)


def test_every_model_id_and_cost_string_appears_exactly() -> None:
    report = sample_report()
    page = render_html(report)
    models = {p["model"] for p in report["series"]["cost_by_day_model"]} | {"google/gemini-3.5-flash", "google/gemini-3.6-flash"}
    for model in models:
        assert (model if model != EVIL else "evil/&lt;script&gt;alert(1)&lt;/script&gt;") in page
    costs = {p["cost"] for p in report["series"]["cost_by_day_model"] if p["cost"] != "0"}
    costs |= {p["cost"] for p in report["series"]["cost_by_model"]}
    for row in [*report["rows"], report["total"]]:
        costs |= set(row["cost"].values())
    for cost in costs:
        assert cost in page, cost
    assert "$1234567.125296789012345678" in page  # total card, not float-rounded
    assert "1,200" in page and "400 (150 r)" in page


def test_everything_from_the_report_is_escaped() -> None:
    page = render_html(sample_report())
    assert "<script" not in page and "alert(1)</" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;bad&amp;code&gt;" in page and "<bad&code>" not in page
    assert "&lt;b&gt;fin&lt;/b&gt;" in page and "<b>fin</b>" not in page


def test_one_bar_segment_per_positive_day_model_pair() -> None:
    report = sample_report()
    page = render_html(report)
    positive = {(p["day"], p["model"]) for p in report["series"]["cost_by_day_model"] if float(p["cost"]) > 0}
    assert page.count('class="seg"') == len(positive) == 4
    assert page.count('class="hbar"') == len(report["series"]["cost_by_model"])


def test_each_model_keeps_its_colour_in_both_charts() -> None:
    page = render_html(sample_report())
    seg = {m: c for c, m in re.findall(r'class="seg"[^>]*fill="([^"]+)"><title>[^<]*? · (.*?): \$', page)}
    bars = {m: c for m, c in re.findall(r'<title>([^<]*)</title>[^<]*</text><rect class="hbar"[^>]*fill="([^"]+)"', page)}
    assert set(seg) == set(bars) and len(set(bars.values())) == 3
    assert all(seg[m] == bars[m] for m in bars)


def test_empty_report_renders_no_data() -> None:
    page = render_html(empty_report())
    assert parse(page).problems == []
    assert page.count("no data") == 3  # two charts and the rows table
    assert 'class="seg"' not in page and 'class="hbar"' not in page
    assert "no errors" in page and "no re-routed requests" in page
    assert "all requests (no filters)" in page


def test_sixty_days_fifteen_models_and_gaps() -> None:
    models = [f"vendor/model-{i:02d}" for i in range(15)]
    days = [f"2026-{m:02d}-{d:02d}" for m, top in ((10, 31), (11, 29)) for d in range(1, top + 1)]
    days.remove("2026-10-15")  # a day without traffic keeps its slot on the axis
    points = [{"day": d, "model": m, "cost": f"0.{(i * 7 + j) % 97 + 1:03d}"}
              for i, d in enumerate(days) for j, m in enumerate(models)]
    report = {**empty_report(), "series": {"cost_by_day_model": points,
                                           "cost_by_model": [{"model": m, "cost": "1.5"} for m in models]}}
    page = render_html(report)
    assert page.count('class="seg"') == len(points)
    assert len(set(re.findall(r'class="seg"[^>]*fill="([^"]+)"', page))) == 15
    day_labels = re.findall(r">(2026-\d\d-\d\d)</text>", page)
    assert 10 <= len(day_labels) <= 20 and day_labels[0] == "2026-10-01"
    assert ">$0</text>" in page  # y axis starts at zero dollars


def test_err_column_counts_like_the_cli_table() -> None:
    """The CLI's err is errored + canceled + expired; the page must agree with it."""
    report = sample_report()
    report["rows"] = [{**report["rows"][0], "errored": 1, "canceled": 2, "expired": 1}]
    page = render_html(report)
    assert "<td>10</td><td>9</td><td>4</td>" in page
