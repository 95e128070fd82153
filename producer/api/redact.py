"""Keep API keys out of the server's log, wherever a client put them.

The SDKs send the key in the Authorization header, which nothing logs; but a user who pastes it into
a URL (`?api_key=sk-otb-...`, as some APIs take it, or as a path segment by mistake) would have it
in the access log line of that request, and in the line of a request that failed. A filter on the
loggers that print request lines replaces every key-shaped word (`sk-` and 16 or more key
characters: ours, and an OpenAI key sent here by mistake) with its prefix and `***`.
"""

from __future__ import annotations

import logging
import re

KEY = re.compile(r"\b(sk-(?:otb-)?)[A-Za-z0-9_\-]{16,}")
LOGGERS = ("uvicorn.access", "uvicorn.error", "otb.api")  # request lines, and failures naming a path


def redacted(value: object) -> object:
    return KEY.sub(r"\1***", value) if isinstance(value, str) else value


class RedactKeys(logging.Filter):
    """Rewrites the record's message and arguments before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redacted(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redacted(v) for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to the request-line loggers (once, however often it is called)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
