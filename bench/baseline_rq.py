"""The plain-RQ baseline of bench/throughput.py: one RQ job per request, the way RQ is usually used.

Run by stock `rq worker -S json` processes (forking Worker: one fork per job). The job POSTs one
provider call with sync httpx and writes the answer to a Redis hash. It imports nothing from
opentoken-batch: the wire body and path are prepared by the benchmark (with the same adapters the
worker uses) and passed as JSON job arguments; the base URL and key come from the worker's
environment (OTB_*_BASE_URL, ANTHROPIC_API_KEY / GEMINI_API_KEY), never from the job.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from rq import get_current_job

PROVIDERS = {  # provider -> (base URL variable, key variable, auth header)
    "anthropic": ("OTB_ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "x-api-key"),
    "google": ("OTB_GOOGLE_BASE_URL", "GEMINI_API_KEY", "x-goog-api-key"),
}


def call(provider: str, path: str, body: dict[str, Any], headers: dict[str, str], results_key: str,
         custom_id: str) -> int:
    """POST one call, store {"status", "body"} under `custom_id` in the hash `results_key`; returns the status."""
    base_var, key_var, auth_header = PROVIDERS[provider]
    response = httpx.post(os.environ[base_var].rstrip("/") + path, json=body,
                          headers={**headers, auth_header: os.environ[key_var]}, timeout=120)
    job = get_current_job()
    assert job is not None, "run by an RQ worker"
    job.connection.hset(results_key, custom_id, json.dumps({"status": response.status_code, "body": response.json()}))
    return response.status_code
