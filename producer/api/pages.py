"""OpenAI's cursor pages: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.

The SDKs' auto-pagers send `after=<last id of the page>` until `has_more` is false, so a page must
end with the id the next one starts after, and `has_more` must be false on the last page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Query

Order = Literal["asc", "desc"]
CURSOR_MAX = 128  # characters: longer is no id of ours


def cursor_page(items: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": list(items), "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def after_param() -> Any:
    return Query(None, max_length=CURSOR_MAX, description="A cursor: the id of the last object of the previous page.")
