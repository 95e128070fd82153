"""The README's "HTTP API" snippets, run as pasted against a real `otb serve` (its URL swapped in),
and the Procfile's web line parsed by the real command."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import click
import pytest

from bench.harness import ROOT, WorkerProcess, worker_env

from .conftest import create_key

pytestmark = pytest.mark.e2e

SECTION = (ROOT / "README.md").read_text().split("## HTTP API\n", 1)[1].split("\n## ", 1)[0]
README_URL = "http://127.0.0.1:8080"


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.S)


def otb_group() -> click.Group:
    from producer.cli import main

    return main


def test_every_otb_line_and_the_procfile_parse():
    lines = [line.split("  #", 1)[0].rstrip(" &") for block in fenced("bash") for line in block.splitlines()]
    lines += [(ROOT / "Procfile").read_text().split("web:", 1)[1].strip().replace("$PORT", "8080")]
    invocations = [shlex.split(line)[1:] for line in lines if line.startswith("otb ")]
    assert len(invocations) >= 5 and ["serve", "--host", "0.0.0.0", "--port", "8080"] in invocations
    group = otb_group()
    for args in invocations:
        command = group.get_command(click.Context(group), args[0])
        assert command is not None, args
        if isinstance(command, click.Group):
            command, args = command.get_command(click.Context(command), args[1]), args[1:]
        command.make_context(args[0], args[1:])


@pytest.fixture
def worker(api_redis, emulator):  # type: ignore[no-untyped-def]
    proc = WorkerProcess(worker_env(api_redis.url, emulator.url))
    yield proc
    proc.stop(timeout=5)


def test_the_curl_and_python_snippets_run_as_pasted(server, env, tmp_path, worker):
    key = create_key(env, "readme")
    (tmp_path / "batch.jsonl").write_text('{"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hi"}]}\n')
    run_env = {**env, "OTB_API_KEY": key}
    curl = [line for block in fenced("bash") for line in block.splitlines() if line.startswith("curl ")]
    assert len(curl) == 4
    outputs = [subprocess.run(["bash", "-c", line.replace(README_URL, server.url)], cwd=tmp_path, env=run_env,
                              capture_output=True, timeout=30).stdout for line in curl]
    chat, embeddings, models, upload = (json.loads(out) for out in outputs)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] and chat["cost"]["total"]
    assert embeddings["object"] == "list" and len(embeddings["data"]) == 2
    assert models["object"] == "list" and upload["object"] == "file"
    (snippet,) = fenced("py")
    proc = subprocess.run([sys.executable, "-c", snippet.replace(README_URL, server.url)], cwd=tmp_path, env=run_env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "'input': 0.5" in out and "batch.jsonl" in out and "'total': '" in out and "\n2 " in out
    assert "\ncompleted BatchRequestCounts(completed=1, failed=0, total=1) " in out  # the batch, run and finalized
