"""The short chaos run in CI: kills and a Redis restart against a faulty emulator lose and duplicate nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.e2e


def test_short_chaos_run_accounts_for_every_request_exactly_once():
    proc = subprocess.run([sys.executable, "-m", "bench.chaos", "--requests", "300", "--kills", "2",
                           "--redis-restarts", "1", "--json", "--timeout", "240"],
                          cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert summary["results"] == summary["requests"] == 300
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["counts_match"] is True
    assert summary["kills"] >= 1 and summary["redis_restarts"] == 1 and summary["faults_injected"] > 0
    assert summary["errored"] >= 1  # the requests the emulator always refuses end errored, once
