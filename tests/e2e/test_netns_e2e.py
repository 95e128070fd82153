"""Workers on separate "machines" (network namespaces): one loses its link mid-chunk and loses nothing.

Runs `bench.netns --only 3 --quick` (two `otb worker`s, each in its own namespace, 600 requests,
OTB_LEASE_TTL=3): the cable of one namespace is pulled while it holds a chunk with calls in flight,
the other worker finishes the batch, the cable goes back in. Needs root and `ip netns` (CI has
both); skipped with the reason otherwise. The bench runs as a subprocess: it talks to the
namespaces' private addresses, which this suite's loopback guard would refuse in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.nsfabric import ip, unavailable

from ..conftest import ROOT

WHY_NOT = unavailable()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces: {WHY_NOT}")]


def _names() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()} | {
        line.split(":", 2)[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()}


def test_a_worker_cut_off_mid_chunk_is_taken_over_and_its_late_commits_are_refused() -> None:
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this pid
    ip("netns", "add", f"otb{dead}n0")  # what a crashed run leaves behind
    ip("link", "add", f"otb{dead}br", "type", "bridge")
    before = _names() - {f"otb{dead}n0", f"otb{dead}br"}

    proc = subprocess.run([sys.executable, "-m", "bench.netns", "--only", "3", "--quick", "--json"],
                          cwd=ROOT, capture_output=True, timeout=240)

    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    cut = report["parts"]["cut_link"]
    # The cut really was mid-chunk, and the batch finished while the worker stayed cut off.
    assert cut["victim_chunks_held"] >= 1 and cut["victim_calls_in_flight_at_cut"] >= 1
    assert cut["completed_while_cut_off"] is True
    # Nothing lost, nothing committed twice; counters and cost equal the result lines.
    assert cut["results"] == cut["requests"] == 600 and cut["lost"] == 0
    assert cut["commit_events"] == 600 and cut["ids_committed_twice"] == 0
    assert cut["counts_match"] is True
    # Requests open in the cut-off worker's chunks went upstream twice (those in flight at the cut, run
    # again by the other worker; and those it sends once its link is back), never more; the cut-off
    # worker's answer to each came last, and its commit was refused.
    assert cut["requests_sent_twice"] >= 1 and cut["max_sends"] == 2
    assert cut["requests_sent_twice"] <= cut["victim_open_requests_in_held"]  # only what the cut-off worker held
    assert cut["victim_late_commits_refused"] == cut["requests_sent_twice"]
    assert cut["results_changed_after_link_back"] == 0 and cut["counters_changed_after_link_back"] == []
    # The crashed run's leftovers are gone, and this run left nothing behind.
    assert {f"otb{dead}n0", f"otb{dead}br"} <= set(report["stale_removed"])
    assert report["leftover_namespaces"] == [] and _names() == before
