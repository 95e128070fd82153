"""`otb emulator` that also records who sent each distinct request body, and when: a request sent twice.

    python -m bench.counting_emulator --host H --port P [--latency-ms L] [--rpm-limit N]

The same app as `otb emulator` (worker/emulator), plus one middleware: every provider call's body
is hashed, and its sender's address and arrival time (CLOCK_MONOTONIC, which every process on the
machine shares) are kept. The worker's translation of a request is deterministic, so two calls with
one body are one request sent twice; with a worker per network namespace the address says which
worker sent it. `GET /_counting/repeats` answers {"calls": n, "distinct": d, "by_sends": {"1": ..,
"2": ..}}; `GET /_counting/sends` lists, for every body sent more than once, its [address, time] pairs.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from worker.emulator import EmulatorConfig
from worker.emulator.server import build_app
from worker.registry import load_registry
from worker.settings import DEFAULT_REGISTRY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counting_app(config: EmulatorConfig) -> web.Application:
    app = build_app(config, load_registry(DEFAULT_REGISTRY))
    sends: dict[bytes, list[tuple[str, float]]] = {}

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and not request.path.startswith("/_"):
            body = hashlib.blake2b(await request.read(), digest_size=16).digest()  # read() is cached for the handler
            sends.setdefault(body, []).append((request.remote or "?", time.monotonic()))
        return await handler(request)

    async def repeats(_: web.Request) -> web.Response:
        by_sends = Counter(len(times) for times in sends.values())
        return web.json_response({"calls": sum(len(times) for times in sends.values()), "distinct": len(sends),
                                  "by_sends": {str(k): v for k, v in sorted(by_sends.items())}})

    async def repeated(_: web.Request) -> web.Response:
        return web.json_response({"repeated": [times for times in sends.values() if len(times) > 1]})

    app.middlewares.append(count)
    app.router.add_get("/_counting/repeats", repeats)
    app.router.add_get("/_counting/sends", repeated)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--rpm-limit", type=int, default=0)
    ap.add_argument("--tpm-limit", type=int, default=0)
    args = ap.parse_args()
    config = EmulatorConfig(latency_ms=args.latency_ms, rpm_limit=args.rpm_limit, tpm_limit=args.tpm_limit)
    web.run_app(counting_app(config), host=args.host, port=args.port, backlog=1024, access_log=None, print=None)


if __name__ == "__main__":
    main()
