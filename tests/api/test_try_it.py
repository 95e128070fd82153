"""README "Try it": `otb serve --emulator` (the whole stack in one process, no REDIS_URL) and the seed's
Python, JS and curl snippets run as pasted against it (only the base URL swapped in), the JS one
under node with the `openai` npm package."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import openai
import pytest
from click.testing import CliRunner

from bench.harness import ROOT, ServerProcess, real_clock_env
from producer.cli import main
from producer.client import Client
from producer.standalone import standalone
from worker.settings import Settings

from .conftest import log_of

SECTION = (ROOT / "README.md").read_text().split("## Try it\n", 1)[1].split("\n## ", 1)[0]
README_URL = "http://127.0.0.1:8080"
TRY_KEY = "otb-try"
# The `openai` npm package's current major that runs on this machine's node 20 (7.x wants node >= 22).
JS_SDK = "openai@6"
HELLO = [{"role": "user", "content": "Hello"}]


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)


def try_env() -> dict[str, str]:
    """A newcomer's environment: no REDIS_URL, no provider keys, no OTB_* settings."""
    drop = ("OTB_", "REDIS_URL", "ANTHROPIC", "GEMINI")
    return {**{k: v for k, v in real_clock_env().items() if not k.startswith(drop)}, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tryit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    started = time.monotonic()
    proc = ServerProcess(try_env(), "--emulator", log=tmp_path_factory.mktemp("try") / "serve.log")
    print(f"\notb serve --emulator: ready in {time.monotonic() - started:.2f} s")
    yield proc
    proc.stop()


def pasted(snippet: str, server: ServerProcess) -> str:
    assert README_URL in snippet
    return snippet.replace(README_URL, server.url)


# -- the command -------------------------------------------------------------------------------------
def test_try_it_shows_the_one_command_and_every_otb_line_in_it_parses():
    commands = [line for block in fenced("sh") for line in block.splitlines() if "otb serve" in line]
    assert commands == [".venv/bin/otb serve --emulator"]
    serve = main.get_command(click.Context(main), "serve")
    assert serve is not None
    serve.make_context("serve", ["--emulator"])


@pytest.mark.parametrize(("extra_env", "args", "says"), [
    ({"REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"}, [], "does not use REDIS_URL"),
    ({}, ["--host", "0.0.0.0"], "only a loopback host"),
])
def test_emulator_refuses_a_redis_url_or_a_reachable_host_in_one_line(extra_env, args, says):
    result = CliRunner().invoke(main, ["serve", "--emulator", "--port", "0", *args],
                                env={"REDIS_URL": None, **extra_env})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and says in result.output
    assert "hunter2" not in result.output


@pytest.mark.e2e
def test_startup_prints_the_base_url_the_key_and_a_curl_line_that_works(tryit):
    out = log_of(tryit)
    assert f"{tryit.base_url} (docs {tryit.url}/docs)" in out and f"use {TRY_KEY}" in out
    (curl,) = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
    answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, timeout=30, check=True).stdout)
    assert answer["choices"][0]["message"]["content"].endswith("to: Hello")


# -- the seed's snippets, as pasted ------------------------------------------------------------------
@pytest.mark.e2e
def test_the_python_snippet_prints_the_answer(tryit, tmp_path):
    (snippet,) = fenced("py")
    proc = subprocess.run([sys.executable, "-c", pasted(snippet, tryit)], cwd=tmp_path, env=try_env(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "Emulated reply from gemini-3-flash-preview to: Hello\n"


@pytest.mark.e2e
def test_the_curl_snippet_prints_the_completion_with_its_cost(tryit):
    (curl,) = [line for block in fenced("sh") for line in block.splitlines() if line.startswith("curl ")]
    proc = subprocess.run(["bash", "-c", pasted(curl, tryit)], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    answer = json.loads(proc.stdout)
    assert answer["object"] == "chat.completion" and answer["model"] == "google/gemini-3-flash"
    assert answer["choices"][0]["message"]["content"] == "Emulated reply from gemini-3-flash-preview to: Hello"
    assert answer["cost"]["total"] == "0.00004"


@pytest.fixture(scope="session")
def node_openai() -> Path:
    """A folder whose node_modules holds the `openai` npm package, installed once per machine and kept."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not installed (.ci/run installs them): the JS snippet cannot run")
    home = Path(tempfile.gettempdir()) / "otb-test-node" / JS_SDK.replace("@", "-")
    if not (home / "node_modules" / "openai" / "package.json").is_file():
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=home.parent))
        proc = subprocess.run([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                               "--no-package-lock", "--loglevel=error", JS_SDK], capture_output=True, timeout=600)
        assert proc.returncode == 0, f"npm install {JS_SDK} failed: {proc.stderr.decode()[-2000:]}"
        try:
            staging.rename(home)
        except OSError:  # another test process got there first
            shutil.rmtree(staging, ignore_errors=True)
    return home


def run_node(script: str, folder: Path, node_openai: Path) -> subprocess.CompletedProcess:
    """`node try.mjs` in a folder that sees the installed package, as after `npm install openai`."""
    (folder / "node_modules").symlink_to(node_openai / "node_modules", target_is_directory=True)
    (folder / "try.mjs").write_text(script)
    return subprocess.run(["node", "try.mjs"], cwd=folder, capture_output=True, timeout=60)


@pytest.mark.e2e
def test_the_js_snippet_prints_the_answer_under_node(tryit, tmp_path, node_openai):
    (snippet,) = fenced("js")
    proc = run_node(pasted(snippet, tryit), tmp_path, node_openai)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "Emulated reply from gemini-3-flash-preview to: Hello\n"


@pytest.mark.e2e
def test_an_unknown_model_throws_400_model_not_found_in_js(tryit, tmp_path, node_openai):
    (snippet,) = fenced("js")
    script = pasted(snippet, tryit).replace('"google/gemini-3-flash"', '"openai/gpt-4o"').replace(
        "console.log(response.choices[0].message.content);", "")
    script = script.replace("const response = await", "let response;\ntry {\nresponse = await") + (
        "} catch (err) {\n  console.log(JSON.stringify({ok: err instanceof OpenAI.BadRequestError, status: err.status,"
        " code: err.code, type: err.type, message: err.error?.message}));\n}\n")
    proc = run_node(script, tmp_path, node_openai)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"ok": True, "status": 400, "code": "model_not_found",
                                       "type": "invalid_request_error", "message": 'model "openai/gpt-4o" not found'}


# -- everything the server offers works in this mode -------------------------------------------------
@pytest.mark.e2e
def test_models_chat_stream_embeddings_and_files_work_through_the_sdk(tryit, tmp_path):
    client = openai.OpenAI(base_url=tryit.base_url, api_key=TRY_KEY, max_retries=0)
    assert "google/gemini-3-flash" in {m.id for m in client.models.list()}
    assert client.models.retrieve("google/gemini-3-flash").id == "google/gemini-3-flash"
    chunks = list(client.chat.completions.create(model="anthropic/claude-haiku-5-5", messages=HELLO, max_tokens=50,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith("to: Hello")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    vectors = client.embeddings.create(model="google/gemini-embedding-001", input=["first text", "second text"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b'{"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hi"}]}\n')
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.content(uploaded.id).content == path.read_bytes()
    assert client.files.delete(uploaded.id).deleted
    assert httpx.get(f"{tryit.url}/docs").status_code == 200
    assert "otb_queue" in httpx.get(f"{tryit.url}/metrics").text


def test_the_in_process_worker_takes_batch_chunks_too(registry):
    """Not only calls: a batch on the batch queue runs in the same process (chunk jobs, claims, results)."""
    requests = [{"custom_id": f"q{i}", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": f"Hi {i}"}]}
                for i in range(25)]
    with standalone(Settings(chunk_size=10), registry) as stack:
        client = Client(stack.conn, stack.settings, registry)
        status = client.wait(client.submit(requests), timeout=60)
        lines = {line["custom_id"]: line for line in client.results(status["id"])}
    assert status["status"] == "completed" and status["request_counts"]["succeeded"] == 25
    assert lines["q7"]["response"]["body"]["choices"][0]["message"]["content"].endswith("to: Hi 7")


@pytest.mark.e2e
def test_a_batch_through_the_api_completes_when_the_api_serves_batches(tryit, tmp_path):
    """Batches go on the batch queue, which the in-process worker takes too (after calls)."""
    client = openai.OpenAI(base_url=tryit.base_url, api_key=TRY_KEY, max_retries=0)
    if "/v1/batches" not in httpx.get(f"{tryit.url}/openapi.json").json()["paths"]:
        pytest.skip("this server has no /v1/batches yet")
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": f"Hi {i}"}]}}
             for i in range(3)]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = client.batches.create(input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 3
    assert batch.output_file_id
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["q0", "q1", "q2"]


@pytest.mark.e2e
def test_one_chat_call_latency_through_it(tryit):
    """Printed, not asserted (timings are no test): the figure README's *Try it* numbers come from."""
    client = openai.OpenAI(base_url=tryit.base_url, api_key=TRY_KEY, max_retries=0)
    took = []
    for _ in range(20):
        started = time.perf_counter()
        assert client.chat.completions.create(model="google/gemini-3-flash", messages=HELLO).choices
        took.append(time.perf_counter() - started)
    print(f"\n20 chat calls one after another through otb serve --emulator (emulator latency 0): median "
          f"{statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms")
