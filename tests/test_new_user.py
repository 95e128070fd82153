"""What a new user hits first, checked without a Redis server: options, messages, the Python API's
refusal of a private Redis, the progress notes, the report table's counts, the batch file's limits."""

from __future__ import annotations

import gzip
import io
import json
from decimal import Decimal

import pytest
from click.testing import CliRunner

from producer import batchfile
from producer.batchfile import Limits, read_batch
from producer.cli import main
from producer.client import Client
from producer.progress import Progress
from producer.report import render_table
from worker.errors import ConfigError
from worker.settings import Settings

from .conftest import ROOT

GOOD = json.dumps({"model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "hi"}]})


def otb(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": "", "OTB_REGISTRY": "", **(env or {})}
    return CliRunner().invoke(main, list(args), env=env, input=input, prog_name="otb")


# -- options -----------------------------------------------------------------------------------
def test_version_and_short_help():
    assert otb("--version").output.startswith("otb, version ")
    assert otb("-h").exit_code == 0 and "Usage: otb" in otb("-h").output
    assert "Usage: otb submit" in otb("submit", "-h").output


@pytest.mark.parametrize("window", ["3", "90", "3x", "h"])
def test_a_completion_window_needs_a_unit(window):
    result = otb("submit", "f.jsonl", "--completion-window", window)
    assert result.exit_code == 2 and "give a number and a unit, such as 24h" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("amount", ["1e16", "1e30", "99999999"])
def test_a_huge_budget_is_one_clear_line(amount):
    result = otb("submit", "f.jsonl", "--max-cost", amount)
    assert result.exit_code == 2 and "more than the largest budget" in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_redis_url_without_a_scheme_is_one_clear_line():
    result = otb("status", "batch_x", env={"REDIS_URL": "user:secret@localhost:6379"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "REDIS_URL must start with redis://, rediss:// or unix://" in result.output
    assert "secret" not in result.output
    with pytest.raises(ConfigError):
        Settings.from_env({"REDIS_URL": "localhost:6379"})
    assert Settings.from_env({"REDIS_URL": "REDIS://h:1/0"}).redis_url == "REDIS://h:1/0"


def test_models_json_all_lists_retired_models_too():
    callable_ids = {m["id"] for m in json.loads(otb("models", "--json").output)["data"]}
    every = json.loads(otb("models", "--json", "--all").output)["data"]
    retired = [m for m in every if m["id"] not in callable_ids]
    assert retired and all(m["retired_on"] and m["object"] == "model" for m in retired)


# -- the registry ships with the package --------------------------------------------------------
def test_the_packaged_registry_is_the_top_level_file():
    """In a checkout the package's registry is the top-level file itself (a symlink), so there is one to edit."""
    assert Settings().registry_path == ROOT / "worker" / "registry.json"
    assert Settings().registry_path.resolve() == (ROOT / "registry.json").resolve()


# -- the Python API never falls back to a private Redis ------------------------------------------
def test_client_from_env_refuses_without_redis_url(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        Client.from_env()


def test_client_embedded_is_explicit_and_runs_its_work_here(emulator):
    settings = Settings(anthropic_base_url=emulator.url, google_base_url=emulator.url, api_keys={"google": "k"})
    client = Client.embedded(settings)
    bid = client.submit([json.loads(GOOD)])
    client.run_here()
    assert client.status(bid)["request_counts"]["succeeded"] == 1
    assert client.status(bid)["object"] == "otb.batch_status"
    assert [b["id"] for b in client.batches()] == [bid]


# -- bad files ---------------------------------------------------------------------------------
def test_more_lines_than_the_limit_are_refused_whole_naming_the_count(registry):
    raw = io.BytesIO(("\n".join([GOOD] * 8) + "\n").encode())
    with pytest.raises(batchfile.OTBError, match="the file has 8 request lines and a batch holds at most 5"):
        read_batch(raw, registry, limits=Limits(max_lines=5))


def test_a_file_over_the_limit_is_refused_even_with_keep_valid(tmp_path):
    src = tmp_path / "big.jsonl"
    src.write_text("\n".join([GOOD] * 8) + "\n")
    result = otb("run", str(src), "--keep-valid", env={"OTB_MAX_LINES": "5"})
    assert result.exit_code == 1
    assert "the file has 8 request lines and a batch holds at most 5" in result.output
    assert "nothing was enqueued" in result.output


def test_a_gzip_file_is_one_error(registry):
    parsed = read_batch(io.BytesIO(gzip.compress(("\n".join([GOOD] * 500)).encode())), registry)
    assert len(parsed.errors) == 1 and isinstance(parsed.errors[0].error, batchfile.NotJsonl)
    assert "gzip-compressed: expected JSONL, one request per line" in str(parsed.errors[0])


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_file_is_one_error_naming_its_encoding(registry, encoding, named):
    """Windows tools save "Unicode" text as UTF-16: say so once, not one baffling error per line."""
    data = ("\n".join([GOOD] * 50) + "\n").encode(encoding)
    parsed = read_batch(io.BytesIO(data), registry)
    assert [e.number for e in parsed.errors] == [1] and parsed.lines == []
    assert f"the file is {named}-encoded" in str(parsed.errors[0]) and f"iconv -f {named}" in str(parsed.errors[0])


def test_an_empty_file_is_one_line_and_fails(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"\n\n")
    result = otb("estimate", str(src))
    assert result.exit_code == 1
    assert result.output.strip() == "Error: the file has no request lines"
    result = otb("submit", str(src), env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1 and "line 0" not in result.output


def test_a_file_with_no_valid_line_fails_estimate(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"custom_id": "a"}\n')
    result = otb("estimate", str(src))
    assert result.exit_code == 1 and "no line is valid" in result.output


def test_a_csv_file_lists_twenty_errors_a_count_and_what_was_expected(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text("custom_id,model,prompt\n" + "".join(f"r{i},google/gemini-3-flash,hello {i}\n" for i in range(1000)))
    result = otb("estimate", str(src))
    errors = [ln for ln in result.output.splitlines() if ln.startswith("line ")]
    assert len(errors) == 20
    assert "... and 981 more bad lines (1,001 in all)" in result.output
    assert "expected JSONL, one request per line" in result.output


def test_an_unknown_model_id_gets_a_did_you_mean(tmp_path):
    src = tmp_path / "typo.jsonl"
    src.write_text(GOOD.replace("gemini-3-flash", "gemini-3-flsh") + "\n")
    result = otb("estimate", str(src))
    assert '"code": "model_not_found"' in result.output and "did you mean google/gemini-3-flash" in result.output


# -- progress notes ------------------------------------------------------------------------------
def status(done: int, total: int = 3, **counts: int) -> dict:
    return {"id": "batch_x", "cost": {"total": "0"}, "parked": None,
            "request_counts": {"total": total, "processing": total - done, "errored": 0, "canceled": 0, "expired": 0,
                               **counts}}


def test_progress_shows_a_note_and_a_pipe_gets_a_line_when_it_appears():
    out = io.StringIO()
    p = Progress(out, tty=False, every=600)
    p.update(status(0))
    p.update(status(0), "no worker is listening on queue 'otb'")
    p.update(None, "Redis unreachable, retrying (3s)")
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("no worker is listening on queue 'otb'")
    assert lines[-1].startswith("batch_x: 0/3 done") and lines[-1].endswith("Redis unreachable, retrying (3s)")


def test_progress_does_not_call_canceled_requests_errored():
    out = io.StringIO()
    Progress(out, tty=False).finish(status(3, errored=1, canceled=2))
    assert "1 errored, 2 canceled," in out.getvalue()


def test_report_table_counts_canceled_apart_from_errors():
    zero = {"input": 0, "cache_read": 0, "cache_write": 0, "output": 0, "reasoning": 0}
    cost = {k: "0" for k in ("input", "cache_read", "cache_write", "output", "total")}
    row = {"group": {"model": "m"}, "requests": 616, "succeeded": 0, "errored": 0, "canceled": 616, "expired": 0,
           "tokens": zero, "cost": cost}
    table = render_table({"group_by": ["model"], "rows": [row], "total": {**row, "group": {}}, "errors": {},
                          "rerouted": []})
    head, _, first = table.splitlines()[:3]
    assert head.split()[:6] == ["model", "reqs", "ok", "err", "canceled", "input"]
    assert first.split()[:5] == ["m", "616", "0", "0", "616"]
    assert Decimal(first.split()[-1]) == 0


def test_a_file_of_nul_bytes_is_not_called_utf32(registry):
    parsed = read_batch(io.BytesIO(b"\x00" * 100 + b"\n"), registry)
    assert len(parsed.errors) == 1 and "encoded" not in parsed.errors[0].error.message


def test_keys_list_masks_a_webhook_url_s_credentials_and_tokens():
    from producer.api.tenants import shown_url

    assert shown_url("https://user:pw@hooks.example.com/in?token=abc&v") == "https://***@hooks.example.com/in?token=***&v"
    assert shown_url("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000/hook"
