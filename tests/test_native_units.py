"""The native route's pure parts: which lines go native, the wire facts of both batch APIs, the state
record, and the estimate of a native batch. (End to end: tests/e2e/test_native_e2e.py.)"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from producer.batchfile import read_batch
from producer.estimate import estimate
from worker.errors import InvalidRequest
from worker.native import goes_native, native_state
from worker.native.state import Part
from worker.providers.anthropic import batches as anthropic
from worker.providers.google import batches as google
from worker.registry import Registry
from worker.settings import Settings

S = Settings()
CLAUDE, GEMINI, EMBED = "anthropic/claude-haiku-5-5", "google/gemini-3-flash", "google/gemini-embedding-001"


def body(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_which_lines_go_native(registry: Registry) -> None:
    claude, gemini = registry.resolve_for(CLAUDE, "chat"), registry.resolve_for(GEMINI, "chat")
    embed = registry.resolve_for(EMBED, "embedding")
    assert goes_native("native", claude, "chat", body(CLAUDE), None, S)
    assert goes_native("native", gemini, "chat", body(GEMINI), None, S)
    assert not goes_native("realtime", claude, "chat", body(CLAUDE), None, S)
    assert not goes_native("flex", gemini, "chat", body(GEMINI), None, S)
    assert goes_native("auto", claude, "chat", body(CLAUDE), 7200, S)  # Claude at half price: Message Batches
    assert not goes_native("auto", gemini, "chat", body(GEMINI), 7200, S)  # a short window: flex
    assert goes_native("auto", gemini, "chat", body(GEMINI), 2 * 86400, S)  # a long one: Batch Mode
    vectors = {"model": EMBED, "input": "x"}
    assert goes_native("native", embed, "embedding", vectors, None, S)  # asyncBatchEmbedContent
    assert goes_native("auto", embed, "embedding", vectors, 2 * 86400, S)  # a window long enough for Batch Mode
    assert not goes_native("auto", embed, "embedding", vectors, 7200, S)  # a short one: real time (no flex tier)
    assert not goes_native("native", embed, "embedding", vectors, None, S, budget=True)
    assert not goes_native("native", claude, "chat", body(CLAUDE, service_tier="default"), None, S)
    assert not goes_native("native", claude, "chat", body(CLAUDE), None, S, budget=True)  # holds are per call


def test_anthropic_custom_ids_map_to_positions_and_back() -> None:
    sent = anthropic.sent_id("otbabc123p0", 41)
    assert sent == "otbabc123p0_41" and anthropic.CUSTOM_ID.match(sent)
    assert anthropic.position_of("otbabc123p0", sent) == 41
    assert anthropic.position_of("otbother", sent) is None and anthropic.position_of("otbabc123p0", "x_y") is None


def test_anthropic_batch_params_refuse_or_drop_what_batches_refuse() -> None:
    assert anthropic.batch_params({"model": "m", "max_tokens": 5}, drop_unsupported=False) == (
        {"model": "m", "max_tokens": 5}, [])
    with pytest.raises(InvalidRequest, match="speed: fast mode is not available in batches"):
        anthropic.batch_params({"model": "m", "max_tokens": 5, "speed": "fast"}, drop_unsupported=False)
    assert anthropic.batch_params({"model": "m", "max_tokens": 5, "speed": "fast", "stream": False},
                                  drop_unsupported=True) == ({"model": "m", "max_tokens": 5, "stream": False}, ["speed"])


@pytest.mark.parametrize("kind, status, retryable", [
    ("invalid_request_error", 400, False), ("not_found_error", 404, False), ("overloaded_error", 529, True),
    ("api_error", 500, True), ("something_new", 500, True)])
def test_an_errored_result_keeps_its_status_and_body(kind: str, status: int, retryable: bool) -> None:
    error = anthropic.result_error({"type": "errored", "error": {"type": "error", "error": {
        "type": kind, "message": "why it failed"}}})
    assert (error.status_code, error.retryable) == (status, retryable)
    assert "why it failed" in error.message and error.code == kind


def test_gemini_states_in_both_spellings_and_output_lines() -> None:
    for raw in ("BATCH_STATE_SUCCEEDED", "JOB_STATE_SUCCEEDED"):
        assert google.state_of({"metadata": {"state": raw}}) == "SUCCEEDED"
    assert google.state_of({}) == "PENDING"
    op = {"metadata": {"displayName": "otbx", "batchStats": {"requestCount": "3", "successfulRequestCount": "2"}},
          "response": {"responsesFile": "files/out"}}
    assert google.display_name(op) == "otbx" and google.responses_file(op) == "files/out"
    assert google.stats(op) == {"requestCount": 3, "successfulRequestCount": 2}
    assert google.create_path("/v1beta/models/gemini-3-flash-preview:generateContent") == \
        "/v1beta/models/gemini-3-flash-preview:batchGenerateContent"
    error = google.line_error({"code": 400, "message": "bad contents", "status": "INVALID_ARGUMENT"})
    assert error.status_code == 400 and "bad contents" in error.message


def test_a_part_survives_its_trip_through_a_redis_hash() -> None:
    part = Part(3, "google", GEMINI, 10, sent=9, state="created", marker="otbm", intent_at=1.5,
                provider_id="batches/x", progress={"requestCount": 9}, note="n")
    raw = {k.encode(): str(v).encode() for k, v in part.fields().items()}
    assert Part.of(raw) == part


def test_estimate_by_mode_native_prices_every_chat_line_at_the_batch_tier(registry: Registry) -> None:
    lines = [json.dumps(body(m)).encode() for m in (CLAUDE, GEMINI)]
    parsed = read_batch(lines, registry)
    native = estimate(parsed, registry, mode="native", settings=S)
    plain = estimate(parsed, registry)
    assert {row["route"] for row in native["rows"]} == {"native"}
    assert Decimal(native["total"]["cost_expected"]) * 2 == Decimal(plain["total"]["cost_expected"])


def test_gemini_embedding_keys_join_each_input_back_to_its_line() -> None:
    assert google.embed_key(12, 3, 130) == "12.3.130" and google.parse_embed_key("12.3.130") == (12, 3, 130)
    for bad in ("12", "12.3", "12.130.130", "012.3.130", "a.b.c", 12, None, "1.2.3.4"):
        assert google.parse_embed_key(bad) is None, bad
    assert google.create_path("/v1beta/models/gemini-embedding-001:batchEmbedContents") == \
        "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent"
    calls = [{"requests": [{"model": "models/m", "content": {"parts": [{"text": t}]}} for t in ("a", "b")]},
             {"requests": [{"model": "models/m", "content": {"parts": [{"text": "c"}]}, "outputDimensionality": 128}]}]
    assert google.embed_requests(calls) == [{"content": {"parts": [{"text": "a"}]}}, {"content": {"parts": [{"text": "b"}]}},
                                           {"content": {"parts": [{"text": "c"}]}, "outputDimensionality": 128}]
    both = google.embed_answer([{"embedding": {"values": [1.0]}, "tokenCount": "3"}, {"embedding": {"values": [2.0]},
                                                                                       "tokenCount": 4}])
    assert both == {"embeddings": [{"values": [1.0]}, {"values": [2.0]}], "usageMetadata": {"promptTokenCount": 7}}
    assert "usageMetadata" not in google.embed_answer([{"embedding": {"values": [1.0]}}])  # then: an estimate, said so


def test_lines_a_retry_registers_while_a_plan_runs_are_planned_next_never_lost(real_redis) -> None:  # type: ignore[no-untyped-def]
    """The poller reads the todo list, a retry pushes more meanwhile, the plan lands: only what it read
    leaves the list, its parts follow the batch's earlier ones, and the batch stays due until the rest
    is planned too."""
    state = native_state(real_redis, S)
    bid = "batch_plan_race"

    def registered(ids: list[str]) -> None:
        with real_redis.pipeline(transaction=True) as pipe:
            state.register(pipe, bid, ids, 1.0)
            pipe.execute()

    registered(["a", "b"])
    read = state.todo(bid)
    registered(["c"])  # a retry, while the plan is being made
    state.save_plan(bid, [(Part(0, "anthropic", CLAUDE, 2), read)], {}, len(read))
    assert state.todo(bid) == ["c"] and state.count(bid) == 1
    assert not state.finish(bid) and state.active(bid)  # "c" still waits: the batch stays due
    state.save_plan(bid, [(Part(state.count(bid), "anthropic", CLAUDE, 1), state.todo(bid))], {}, 1)
    assert [p.n for p in state.parts(bid)] == [0, 1] and state.ids(bid, 1) == ["c"] and state.waiting(bid) == 0
    assert state.finish(bid) and not state.active(bid)
