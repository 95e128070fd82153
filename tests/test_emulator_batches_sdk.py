"""The providers' own SDKs as clients of the emulator's native batch APIs: proof of the wire format.

`anthropic` (Message Batches: create, retrieve, list, results, cancel) and `google-genai` (files.upload
through the resumable protocol, batches.create in file and inline mode, get, list, cancel, download,
create_embeddings) parse what the emulator answers into their typed models.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator

import anthropic
import pytest
from google import genai
from google.genai import types

from worker import clock
from worker.emulator import EmulatorConfig, RunningEmulator, start_background


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with start_background(EmulatorConfig(seed=9, batch_delay_s=0.2)) as running:
        yield running


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_anthropic_sdk(emu: RunningEmulator) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=emu.url, max_retries=0)
    requests = [{"custom_id": f"c{i}", "params": {"model": "claude-x", "max_tokens": 32,
                                                  "messages": [{"role": "user", "content": f"hi {i}"}]}}
                for i in range(3)]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 3
    wait_for(lambda: client.messages.batches.retrieve(batch.id).processing_status == "ended")
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.request_counts.succeeded == 3 and ended.ended_at is not None and ended.results_url
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == ["c0", "c1", "c2"]
    for result in results.values():
        assert result.type == "succeeded" and result.message.usage.service_tier == "batch"
    assert results["c1"].message.content[0].text.endswith("hi 1")  # type: ignore[union-attr]
    assert batch.id in [b.id for b in client.messages.batches.list(limit=1)]
    stalled = client.messages.batches.create(requests=[{"custom_id": "s", "params": {  # type: ignore[list-item]
        "model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "#emu:batch-stall"}]}}])
    assert client.messages.batches.cancel(stalled.id).processing_status in ("canceling", "ended")
    wait_for(lambda: client.messages.batches.retrieve(stalled.id).processing_status == "ended")
    assert [r.result.type for r in client.messages.batches.results(stalled.id)] == ["canceled"]
    hidden = client.messages.batches.create(requests=[{"custom_id": "h", "params": {  # type: ignore[list-item]
        "model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "#emu:batch-404=1"}]}}])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(hidden.id)
    assert client.messages.batches.retrieve(hidden.id).id == hidden.id


@pytest.mark.filterwarnings("ignore:batches.create_embeddings")  # the SDK marks it experimental
def test_google_genai_sdk(emu: RunningEmulator) -> None:
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.url))
    rows = [{"key": f"k{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"hello {i}"}]}]}}
            for i in range(3)]
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "application/jsonl",
                                                                   "display_name": "input"})
    assert uploaded.name and uploaded.size_bytes == len(data) and uploaded.display_name == "input"
    job = client.batches.create(model="gemini-2.5-flash", src=uploaded.name, config={"display_name": "file-job"})
    assert job.name and job.state == types.JobState.JOB_STATE_PENDING and job.display_name == "file-job"
    wait_for(lambda: client.batches.get(name=job.name or "").state == types.JobState.JOB_STATE_SUCCEEDED)
    done = client.batches.get(name=job.name)
    assert done.dest is not None and done.dest.file_name
    lines = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert sorted(line["key"] for line in lines) == ["k0", "k1", "k2"]
    inline = client.batches.create(model="gemini-2.5-flash", src=[
        {"contents": [{"role": "user", "parts": [{"text": "inline"}]}], "metadata": {"key": "only"}}])
    embed = client.batches.create_embeddings(model="gemini-embedding-001", src={
        "inlined_requests": {"contents": [{"parts": [{"text": "vector"}]}]}})
    for made in (inline, embed):
        wait_for(lambda: client.batches.get(name=made.name or "").state == types.JobState.JOB_STATE_SUCCEEDED)
    inlined = client.batches.get(name=inline.name or "").dest
    assert inlined is not None and inlined.inlined_responses
    assert inlined.inlined_responses[0].metadata == {"key": "only"}
    assert (inlined.inlined_responses[0].response.text or "").endswith("inline")  # type: ignore[union-attr]
    vectors = client.batches.get(name=embed.name or "").dest
    assert vectors is not None and vectors.inlined_embed_content_responses
    assert len(vectors.inlined_embed_content_responses[0].response.embedding.values) == 3072  # type: ignore[union-attr]
    stalled = client.batches.create(model="gemini-2.5-flash", src=[
        {"contents": [{"role": "user", "parts": [{"text": "#emu:batch-stall"}]}]}])
    client.batches.cancel(name=stalled.name or "")
    assert client.batches.get(name=stalled.name or "").state == types.JobState.JOB_STATE_CANCELLED
    names = [j.name for j in client.batches.list(config={"page_size": 2})]
    assert {job.name, inline.name, embed.name, stalled.name} <= set(names)
    with clock.pinned(clock.now() + 49 * 3600):  # uploaded files are gone after 48 hours
        with pytest.raises(genai.errors.ClientError):
            client.files.get(name=uploaded.name)
