"""A local stand-in for the Anthropic Messages API and the Gemini API, for tests and benchmarks.

It answers on loopback with the providers' own wire formats (bodies, error shapes, headers), so the
httpx adapters run end to end without a network. Answers are deterministic: token counts follow one
rule, `tokens(text) = max(1, ceil(len(text) / 4))`, so tests can assert exact usage figures and
costs. It emulates what our cost math depends on: Anthropic's cache tokens reported *beside*
`input_tokens`, Gemini's cached tokens *inside* `promptTokenCount`, thinking tokens, tool calls,
Gemini 3 thought signatures, the `2026-10-21` sampling ban, and faults (random or by marker).

Test markers, found anywhere in the raw request body:
    #emu:fail=<status>            always answer <status> with the provider's error body
    #emu:fail-first=<n>:<status>  the first n byte-identical bodies fail, later ones succeed
    #emu:reset                    drop the connection without an answer
    #emu:malformed                200 with a truncated JSON body
    #emu:slow=<ms>                extra latency
    #emu:retry-after=<s>          retry-after / RetryInfo sent on 429 and 529
    #emu:shed[:429]               every Gemini flex call (serviceTier flex) shed with 503 (or 429)
    #emu:shed-first=<n>[:429]     the first n flex calls of the body shed; standard calls answer

Modules: server.py (the app, background and foreground runners), pipeline.py (what every call goes
through), faults.py (markers, random faults, latency), state.py (counts, caches, rate windows),
anthropic.py + anthropic_checks.py and google.py (one per wire format), schema.py (sample values
from a JSON schema), core.py (config, the error an answer raises, the token rule).

Native batch APIs (answers from the same realtime code): anthropic_batches.py (Message Batches),
google_batches.py (Batch Mode), google_files.py (the resumable Files API), over batch_jobs.py (a job's
clock-driven timeline, the `#emu:batch-*` markers, the store) and batch_pipeline.py (control calls).
"""

from __future__ import annotations

from .core import EmulatorConfig, tokens
from .schema import sample_from_schema
from .server import RunningEmulator, build_app, serve, start_background

__all__ = ["EmulatorConfig", "RunningEmulator", "build_app", "sample_from_schema", "serve", "start_background",
           "tokens"]
