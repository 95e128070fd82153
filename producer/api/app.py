"""The ASGI app of `otb serve`: OpenAI's HTTP API over the shared Redis.

/docs and /redoc load Swagger UI and ReDoc from the `fastapi-offline` package's copies (served under
/static-offline-docs), not from a CDN, so they work on a machine without internet.

The app holds no state of its own: keys, tenants, files (and, next, batches and calls) live in
Redis, so any number of `otb serve` processes and `otb worker`s on any machines share them. Routes
are plain `def`s where they only talk to Redis (FastAPI runs them in its thread pool); the upload
is `async` so it can read the body as it streams in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from worker.keys import Keys
from worker.ratelimit import Limiter
from worker.settings import Settings

from . import batches, chat, embeddings, errors, files, models, webhook_delivery
from .aredis import AsyncRedis
from .auth import Gate
from .batchcontext import BatchContext
from .calls import DEFAULT_TIMEOUT, Calls
from .filestore import FileStore

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit for a batch input file (200 MB)


@dataclass(frozen=True)
class ServeOptions:
    no_auth: bool = False
    max_file_bytes: int = MAX_FILE_BYTES
    call_timeout: float = DEFAULT_TIMEOUT  # seconds a chat or embedding call waits for a worker


def create_app(settings: Settings, conn: redis.Redis, options: ServeOptions | None = None, *,
               async_redis: Callable[[], aioredis.Redis] | None = None) -> FastAPI:
    """The app over `conn`; the routers find their stores on `app.state`. `async_redis` makes the
    asyncio client calls wait on (default: one of REDIS_URL; `otb serve --emulator`: the embedded Redis)."""
    options = options or ServeOptions()
    app = FastAPIOffline(title="opentoken-batch", version="1", summary="OpenAI-compatible API over Redis-shared workers",
                  description="Point an OpenAI SDK at `http://HOST:PORT/v1` with a key from `otb keys create NAME`.",
                  responses=errors.OPENAPI_RESPONSES,
                  lifespan=webhook_delivery.lifespan(conn, settings))  # every server delivers webhook events
    app.state.settings = settings
    aredis = AsyncRedis(settings.redis_url or "", async_redis)
    app.state.gate = Gate(aredis, Keys(settings.key_prefix), Limiter(conn, settings.key_prefix, settings.rate_burst),
                          no_auth=options.no_auth)
    app.state.calls = Calls(conn, settings, aredis, options.call_timeout)
    app.state.files = FileStore(conn, settings.key_prefix)
    app.state.max_file_bytes = options.max_file_bytes
    errors.install(app)
    app.include_router(models.router)
    app.include_router(files.router)
    app.include_router(chat.router)
    app.include_router(embeddings.router)
    batches.install(app, BatchContext.of(conn, settings))
    _serve_metrics(app, conn, settings)
    return app


def _serve_metrics(app: FastAPI, conn: redis.Redis, settings: Settings) -> None:
    """/metrics for Prometheus, without a key (like `otb worker --metrics-port`): queue depth and the
    oldest chunk's age, read from Redis at each scrape; no tenant's data. Calls are counted by the
    workers that run them."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.responses import Response

    from worker.metrics_serve import registry_for

    registry = registry_for(conn, settings)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
