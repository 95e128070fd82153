"""A broken registry stops every command with one clear line naming the file, entry and field (never a
traceback), and a running worker keeps the last registry that loaded (issue 8 part 5 items 5, 13)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.registry import current_registry, load_registry

from .conftest import ROOT, otb, worker_env

GOOD = (ROOT / "registry.json").read_text()


def broken(kind: str) -> str:
    """registry.json with one defect, as text."""
    data = json.loads(GOOD)
    if kind == "providers-as-a-list":
        data["providers"] = list(data["providers"].values())
    elif kind == "price-abc":
        data["models"][0]["pricing"]["input"] = "abc"
    elif kind == "models-as-strings":
        data["models"] = ["anthropic/claude-haiku-5-5"]
    elif kind == "half-written":
        return GOOD[: len(GOOD) // 2]
    else:  # NaN, Infinity, 1e400 as the JSON number of a price
        data["models"][0]["pricing"]["input"] = 12345.5
        return json.dumps(data).replace("12345.5", kind, 1)
    return json.dumps(data)


KINDS = ["providers-as-a-list", "price-abc", "NaN", "Infinity", "-Infinity", "1e400", "models-as-strings", "half-written"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_registry_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "registry.json"
    path.write_text(broken(kind))
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["price-abc", "1e400", "providers-as-a-list", "directory"])
def test_the_cli_says_what_is_wrong_in_one_line(tmp_path, kind):
    path = tmp_path if kind == "directory" else tmp_path / "registry.json"
    if kind != "directory":
        path.write_text(broken(kind))
    proc = otb(["models"], {**worker_env("redis://127.0.0.1:1/0", "http://127.0.0.1:1"), "OTB_REGISTRY": str(path)})
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(path) in err


def test_a_worker_keeps_the_last_good_registry_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "registry.json"
    path.write_text(GOOD)
    first = current_registry(path)
    path.write_text(broken("half-written"))
    with caplog.at_level(logging.ERROR, logger="otb.registry"):
        assert current_registry(path) is first
        assert current_registry(path) is first
    said = [r.getMessage() for r in caplog.records if "keeping the last good registry" in r.getMessage()]
    assert len(said) == 1 and "not valid JSON" in said[0]
    data = json.loads(GOOD)
    data["models"] = data["models"][:3]
    path.write_text(json.dumps(data))
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert len(current_registry(path).models) == 3


def test_with_no_good_registry_yet_the_error_is_raised(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(broken("price-abc"))
    with pytest.raises(ConfigError):
        current_registry(Path(path))


def test_suggestions_name_the_model_an_upstream_id_means_and_never_a_retired_one():
    """`google/gemini-3-flash-preview` (the id Google's docs use) was offered three other models, the first
    retired since 2026-05-25; following a hint to a retired model only gave model_retired."""
    import datetime as dt

    registry = load_registry(ROOT / "registry.json")
    day = dt.date(2026, 12, 1)
    assert registry.suggest("google/gemini-3-flash-preview", day)[0] == "google/gemini-3-flash"
    for wrong in ("google/gemini-3-flash-preview", "anthropic/claude-sonnet-4-5-20250929", "google/gemini-3-flsh"):
        hints = registry.suggest(wrong, day)
        assert hints and not any(registry.models[h].is_retired(day) for h in hints), (wrong, hints)
    assert registry.suggest("openai/gpt-4o", day) == []
