"""The README's snippets are the ones users paste: run them, parse them, keep them honest."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys

import click
import pytest

from producer.batchfile import read_batch
from producer.cli import main

from .conftest import ROOT, worker_env

README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n([^\n]+)\n```", README)


def test_readme_starts_with_a_demo_command_and_a_test_command():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("otb demo") and "pip install -e ." in demo
    assert tests.endswith("python -m pytest") and "redis-server" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def otb_invocations() -> list[list[str]]:
    """Every `otb ...` in the README's sh blocks, as argument lists (comments, `&`, `> file`, `[...]`, `/` cut)."""
    found = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].replace("[", "").replace("]", "").strip()
            for part in re.split(r"\s+/\s+|&&|\|| &$", line):
                words = shlex.split(part)
                starts = [i for i, w in enumerate(words) if w == "otb" or w.endswith("/otb")]
                if starts:
                    args = words[starts[0] + 1:]
                    found.append(args[:args.index(">")] if ">" in args else args)
    return found


def test_every_otb_command_in_the_readme_parses():
    invocations = otb_invocations()
    assert len(invocations) >= 15 and ["batches"] in invocations
    for args in invocations:
        command = main.get_command(click.Context(main), args[0])
        assert command is not None, args
        try:
            command.make_context(args[0], args[1:])
        except click.UsageError as exc:
            pytest.fail(f"README: otb {' '.join(args)}: {exc}")


def test_the_input_examples_are_valid(registry):
    example = next(b for b in blocks("json") if '"custom_id": "q1"' in b)
    parsed = read_batch(io.BytesIO(example.encode()), registry)
    assert parsed.errors == [] and len(parsed.lines) == 3


@pytest.mark.e2e
def test_the_python_snippets_run_as_pasted(tmp_path, redis_server, real_redis, emulator, spawn_worker):
    env = worker_env(redis_server.url, emulator.url)
    spawn_worker(env)
    (tmp_path / "batch.jsonl").write_text(
        '{"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "Hi"}]}\n')
    for snippet in blocks("python"):
        proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, f"{snippet}\n{proc.stderr.decode()}"
        assert proc.stdout, snippet
