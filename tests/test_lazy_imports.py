"""`otb --help` and `otb status` load only what they run (issue 12: 0.56 s of imports before); the
public names of `producer` and `worker` stay what they were."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

HEAVY = ("redis", "pydantic", "rq", "aiohttp", "fakeredis", "fastapi", "worker.registry", "producer.client")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_cli_and_its_help_load_neither_redis_nor_pydantic():
    loaded = modules_after("import producer.cli\nfrom producer.cli import main\n"
                           "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}, sorted(loaded)


def test_a_command_s_own_help_loads_only_what_its_options_need():
    loaded = modules_after("from producer.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass")
    assert "worker.providers" in loaded  # --provider lists the adapters
    assert not {"rq", "aiohttp", "fakeredis", "producer.client"} & loaded


def test_status_loads_the_store_not_the_client_or_the_worker():
    loaded = modules_after("from producer.status import batch_status\nfrom worker.store import Store\n"
                           "import producer.cli.batches")
    assert "redis" in loaded
    assert not {"rq", "aiohttp", "fakeredis", "producer.client", "producer.submit", "worker.chunk"} & loaded


def test_the_public_names_are_unchanged():
    import producer
    import producer.client  # loads the submodule producer.submit: the name stays the function
    import worker
    from producer import submit
    from producer.submit import submit as the_function

    assert submit is the_function and producer.submit is the_function
    assert producer.Client is producer.client.Client and producer.BatchNotFound.__module__ == "producer.status"
    assert worker.Settings.__name__ == "Settings" and callable(worker.cost)
    assert set(producer.__all__) >= {"Client", "submit", "SubmitOptions", "BatchNotFound"}


def test_submit_loads_neither_the_http_clients_nor_the_native_poller():
    """`otb submit` routes lines (worker.native.goes_native) but sends nothing: aiohttp, httpx and the
    poller took ~0.15 s of every submit before they were loaded on first use."""
    loaded = modules_after("import producer.submit\nimport producer.cli.submitting")
    assert "worker.native" in loaded
    assert not {"aiohttp", "httpx", "worker.native.poller", "worker.request", "worker.upstream"} & loaded


def test_the_native_package_still_offers_its_poller():
    loaded = modules_after("from worker.native import NativePoller, run_until_done")
    assert "worker.native.poller" in loaded
