"""The aiohttp app and how it runs: in a background thread (tests, `otb run`) or in front (`otb emulator`)."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

from aiohttp import web

from ..registry import Registry
from . import anthropic, anthropic_batches, google, google_batches, google_files
from .core import EmulatorConfig
from .state import STATE, State


async def _stats(request: web.Request) -> web.Response:
    """Counts by endpoint, status and model, so tests and benchmarks can check what was called."""
    return web.json_response(request.app[STATE].snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def build_app(config: EmulatorConfig, registry: Registry | None = None) -> web.Application:
    """The aiohttp app; `registry` (optional) supplies retired models and Gemini's routed_to."""
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = State(config, registry)
    for native in (anthropic_batches, google_files, google_batches):  # first: Gemini's models/* route catches all
        native.install(app)
    app.add_routes([*anthropic.ROUTES, *google.ROUTES])  # one module per provider's wire format
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_post("/_emulator/reset", _reset)
    return app


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


class RunningEmulator:
    """An emulator served by its own event loop in a daemon thread (see `start_background`)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, args=(host, port), name="otb-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner, self.url = self._loop.run_until_complete(_start(self._app, host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._failure = exc
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stats(self) -> dict[str, Any]:
        """The same dict as GET /_emulator/stats, read on the server's loop (no torn counters)."""
        async def snap() -> dict[str, Any]:
            return self._app[STATE].snapshot()
        if not self._thread.is_alive():
            return self._app[STATE].snapshot()
        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(timeout=5)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "RunningEmulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(config: EmulatorConfig | None = None, registry: Registry | None = None,
                     host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    """Start listening (port 0 = any free port) and return once connections are accepted."""
    return RunningEmulator(build_app(config or EmulatorConfig(), registry), host, port)


def serve(host: str, port: int, config: EmulatorConfig, registry: Registry | None = None) -> None:
    """Serve in the foreground (`otb emulator`) until SIGINT or SIGTERM."""
    async def main() -> None:
        runner, url = await _start(build_app(config, registry), host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"emulator listening on {url}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
