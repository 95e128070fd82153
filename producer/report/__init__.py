"""Cost reports: the report model read from the running aggregates (model.py), rendered as a text
table or CSV (text.py) or a self-contained HTML page (html.py); JSON is the model itself."""

from .html import render_html
from .model import GROUPS, Query, build_report, total_of_lines
from .text import format_columns, render_csv, render_table

__all__ = ["GROUPS", "Query", "build_report", "format_columns", "render_csv", "render_html", "render_table",
           "total_of_lines"]
