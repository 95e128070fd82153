"""Pure parts of the Batch API: the create's parameters, the status mapping, the Batch object, the records."""

from __future__ import annotations

import json

import fakeredis
import pytest
from openai.types import Batch

from producer.api.batchcreate import MAX_ERRORS, parse_create, line_errors
from producer.api.batchobject import figures, openai_status, to_openai
from producer.api.batchrecords import BatchRecord, BatchRecords, new_batch_id
from producer.batchfile import LineError
from worker.errors import InvalidRequest, ModelNotFound
from worker.keys import Keys


def body(**fields: object) -> bytes:
    return json.dumps({"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                       **fields}).encode()


def engine(status: str, **extra: object) -> dict:
    counts = {"total": 5, "succeeded": 2, "errored": 1, "canceled": 1, "expired": 0, "processing": 1}
    usage = {"input_tokens": 10, "cache_read_tokens": 4, "cache_write_tokens": 2, "output_tokens": 7, "reasoning_tokens": 3}
    cost = {"input": "0.1", "cache_read": "0.01", "cache_write": "0.02", "output": "0.3", "total": "0.43"}
    return {"status": status, "request_counts": counts, "usage": usage, "cost": cost, "completed_at": 1_800_000_100.5,
            **extra}


def record(status: str = "in_progress", **fields: object) -> BatchRecord:
    return BatchRecord(new_batch_id(), "acme", "/v1/chat/completions", "file-1", 1_800_000_000, status=status,
                       **fields)  # type: ignore[arg-type]


def test_the_bounds_openai_sets_are_accepted_and_one_past_them_refused():
    edge = parse_create(body(metadata={f"k{i:062d}": "v" * 512 for i in range(16)},
                             output_expires_after={"anchor": "created_at", "seconds": 2592000}))
    assert len(edge.metadata or {}) == 16 and edge.output_ttl == 2592000
    assert parse_create(body(output_expires_after={"anchor": "created_at", "seconds": 3600})).output_ttl == 3600
    refused = [body(metadata={"k" * 65: "v"}), body(output_expires_after={"anchor": "created_at", "seconds": 3599}),
               body(output_expires_after={"anchor": "created_at", "seconds": True}),
               body(output_expires_after={"anchor": "now", "seconds": 3600}), body(metadata={"k": 1}),
               body(completion_window="48h"), body(endpoint="/v1/completions"), body(model="x"),
               b"[1]", b"{", b"[" * 100_000]
    for raw in refused:
        with pytest.raises(InvalidRequest):
            parse_create(raw)


@pytest.mark.parametrize(("phase", "engine_status", "cancel", "shown"), [
    ("validating", None, False, "validating"), ("validating", None, True, "cancelling"), ("failed", None, False, "failed"),
    ("in_progress", "in_progress", False, "in_progress"), ("in_progress", "in_progress", True, "cancelling"),
    ("in_progress", "cancelling", False, "cancelling"), ("in_progress", "expiring", False, "in_progress"),
    ("in_progress", "completed", False, "finalizing"), ("in_progress", "cancelled", True, "cancelling"),
    ("in_progress", "expired", False, "finalizing"), ("in_progress", "lost", False, "finalizing"),
    ("completed", None, False, "completed"), ("expired", None, False, "expired"), ("cancelled", None, True, "cancelled"),
])
def test_only_openai_statuses_are_shown(phase, engine_status, cancel, shown):
    rec = record(phase, times={"cancelling_at": 1_800_000_050} if cancel else {})
    eng = engine(engine_status) if engine_status else None
    assert openai_status(rec, eng) == shown
    Batch.model_validate(to_openai(rec, eng))  # whatever the status, the SDK takes the object


def test_a_gone_engine_batch_is_finalized_as_failed():
    assert openai_status(record(), None) == "finalizing"  # then finalize() makes it failed, naming why


def test_the_batch_object_maps_our_buckets_onto_openai_s_fields():
    obj = to_openai(record(metadata={"a": "b"}, model="anthropic/claude-haiku-5-5"), engine("completed"))
    assert obj["request_counts"] == {"total": 5, "completed": 2, "failed": 2}
    assert obj["usage"] == {"input_tokens": 16, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
                            "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 23}
    assert obj["cost"]["total"] == "0.43" and obj["finalizing_at"] == 1_800_000_100
    assert obj["expires_at"] == obj["created_at"] + 86400
    frozen = record("completed", figures=figures(engine("completed")), times={"completed_at": 1_800_000_200})
    assert to_openai(frozen, None)["request_counts"]["completed"] == 2  # final: the frozen figures, no engine read
    batch = Batch.model_validate(obj)
    assert batch.status == "finalizing" and batch.usage and batch.usage.input_tokens == 16


def test_a_failed_file_lists_the_first_thousand_bad_lines_then_counts_the_rest():
    errors = [LineError(n, None, ModelNotFound("openai/gpt-4o")) for n in range(1, MAX_ERRORS + 6)]
    listed = line_errors(errors)
    assert len(listed) == MAX_ERRORS + 1 and listed[0] == {"code": "model_not_found", "line": 1, "param": None,
                                                           "message": 'model "openai/gpt-4o" not found'}
    assert listed[-1]["code"] == "too_many_errors" and "5 more" in listed[-1]["message"]
    assert line_errors([LineError(0, None, InvalidRequest("the batch is empty"))])[0]["line"] is None


def test_records_round_trip_and_never_come_back_to_life():
    conn = fakeredis.FakeRedis()
    records = BatchRecords(conn, Keys(), ttl=60)
    rec = record("validating", metadata={"a": "b"}, times={"cancelling_at": 5})
    stored, created = records.create(rec, None, "me", 1000)
    assert created and records.get("acme", rec.id) == rec
    assert records.get("bob", rec.id) is None and records.get("acme", "batch_../x") is None
    conn.delete(Keys().api_batch("acme", rec.id))  # expired
    assert records.update(rec, "validating", status="in_progress") is None
    records.mark(rec, "in_progress_at", 7)
    assert conn.exists(Keys().api_batch("acme", rec.id)) == 0
    assert records.page("acme", after=None, limit=10) == ([], False)  # and its index entry is dropped
    assert conn.zcard(Keys().api_batches("acme")) == 0


def test_ids_sort_by_time_so_pages_are_newest_first():
    conn = fakeredis.FakeRedis()
    records = BatchRecords(conn, Keys(), ttl=60)
    made = [records.create(record("failed"), None, "me", 1000)[0].id for _ in range(30)]
    assert made == sorted(made)
    first, more = records.page("acme", after=None, limit=20)
    rest, done = records.page("acme", after=first[-1].id, limit=20)
    assert ([r.id for r in first + rest], more, done) == (made[::-1], True, False)


def test_hooks_run_again_for_a_batch_made_final_by_a_server_that_died_before_them():
    from producer.api.batchcontext import BatchContext
    from producer.api.finalizer import Finalizer
    from worker.settings import Settings

    calls: list[tuple[str, str, str]] = []
    ctx = BatchContext.of(fakeredis.FakeRedis(), Settings(), hooks=[lambda *args: calls.append(args)])
    rec, _ = ctx.records.create(record("validating"), None, "me", 1000)
    assert ctx.records.update(rec, "validating", status="failed", failed_at=1) is not None  # ... then it died
    Finalizer(ctx).sweep()
    Finalizer(ctx).sweep()
    assert calls == [("acme", rec.id, "failed")] and list(ctx.records.open_batches()) == []
