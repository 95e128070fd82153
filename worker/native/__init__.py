"""The native route: lines sent through the providers' own batch APIs (Anthropic Message Batches,
Gemini Batch Mode) at half price, with the same result lines as real time.

At submit (`register`), the lines the batch's mode sends native are set aside for a poller instead of
going into chunk jobs; the poller (poller.py), a thread of every `otb worker`, plans them into
provider batches, creates them crash-safely, polls them, imports their results through the normal
commit path, and hands what they leave to real time while the completion window allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from .. import clock
from ..lazy import lazy_names
from ..registry import ModelSpec
from ..routes import NATIVE, mode_route, line_tier
from ..settings import Settings
from .state import native_state

if TYPE_CHECKING:
    from .poller import NativePoller, run_until_done

PROVIDERS = ("anthropic", "google")  # those with a batch API this route speaks
EMBEDDING_PROVIDERS = ("google",)  # those whose batch API embeds (asyncBatchEmbedContent)

__all__ = ["NativePoller", "goes_native", "native_open", "native_state", "poke", "register", "run_until_done", "summary"]

# The poller (and through it the HTTP clients and the adapters' result parsing) is imported when first
# used: `otb submit` needs only the routing below, and importing aiohttp and httpx took ~0.15 s of it.
__getattr__ = lazy_names(__name__, globals(), {"NativePoller": "poller", "run_until_done": "poller"})


def goes_native(mode: str, spec: ModelSpec, kind: str, body: dict[str, Any], window: float | None,
                settings: Settings, *, budget: bool = False) -> bool:
    """Does this line go to its provider's batch API? Lines of the mode's native leg (chat; embeddings on
    Gemini, whose asyncBatchEmbedContent takes them), unless the line asks for a tier of its own or the
    batch has a budget (holds are per real-time call)."""
    if budget or spec.provider not in PROVIDERS or line_tier(body) in ("default", "flex"):
        return False
    if kind != "chat" and spec.provider not in EMBEDDING_PROVIDERS:
        return False
    return mode_route(mode, spec, kind, window, settings) == NATIVE


def register(pipe: Any, conn: redis.Redis, settings: Settings, bid: str, ids: list[str]) -> None:
    """At submit, on its transaction: these lines go native; a poller takes them up at once."""
    if ids:
        native_state(conn, settings).register(pipe, bid, ids, clock.now())


def native_open(conn: redis.Redis, settings: Settings) -> int:
    """How many batches still have native lines a poller looks after (`otb worker --burst` waits for them)."""
    return int(conn.zcard(native_state(conn, settings).keys.native_due))


def poke(conn: redis.Redis, settings: Settings, bid: str) -> None:
    """Have a poller look at the batch now (it was cancelled), if it has native work."""
    state = native_state(conn, settings)
    if state.active(bid):
        state.schedule(bid, clock.now())


def summary(conn: redis.Redis, settings: Settings, bid: str) -> list[dict[str, Any]] | None:
    """The batch's provider batches as `otb status` shows them (None: it has no native lines)."""
    state = native_state(conn, settings)
    if not state.info(bid):
        return None
    waiting = state.waiting(bid)
    planning: list[dict[str, Any]] = [{"state": "planning", "requests": waiting}] if waiting else []
    return planning + [
        {"provider": part.provider, "model": part.model, "provider_batch": part.provider_id or None, "state": part.state,
         "provider_status": part.status or None, "requests": part.sent or part.count, "progress": part.progress,
         **({"note": part.note} if part.note else {})} for part in state.parts(bid)]
