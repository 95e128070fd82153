"""The README's two commands are the ones CI and users run: keep them honest."""

from __future__ import annotations

import re

from .conftest import ROOT


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n([^\n]+)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_a_demo_command_and_a_test_command():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("otb demo") and "pip install -e ." in demo
    assert tests.endswith("python -m pytest") and "redis-server" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
