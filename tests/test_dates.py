"""The suite and the demo hold on any date.

Models retire and prices change on dates the registry names, so anything that runs on the real
date (the demo, the benchmarks, end-to-end tests with real processes) uses models with no
retirement scheduled; the demo is run here on the dates the registry's changes fall around.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main
from worker import clock
from worker.registry import Registry

from .conftest import ROOT

# Files whose models meet the real date: they may not name a model that retires.
REAL_DATE_FILES = [ROOT / "producer" / "examples" / "demo.jsonl", *sorted((ROOT / "bench").glob("*.py")),
                   *sorted((ROOT / "tests" / "e2e").glob("*.py"))]
# Named on purpose as retired (a test that the catalog leaves them out).
RETIRED_ON_PURPOSE = {"anthropic/claude-opus-4-1"}
MODEL_ID = re.compile(r'"((?:anthropic|google)/[a-z0-9.-]+)"')


def ids_in(path: Path) -> set[str]:
    return set(MODEL_ID.findall(path.read_text(encoding="utf-8")))


def test_files_run_on_the_real_date_name_no_model_that_retires(registry: Registry) -> None:
    named = {(path.relative_to(ROOT).as_posix(), model_id) for path in REAL_DATE_FILES for model_id in ids_in(path)}
    assert len(named) > 20  # the scan finds what it is meant to
    doomed = sorted(
        f"{where}: {model_id} retires on {spec.lifecycle.retires_on}"
        for where, model_id in named
        if (spec := registry.models.get(model_id)) is not None and model_id not in RETIRED_ON_PURPOSE
        and (spec.lifecycle.retires_on is not None or spec.lifecycle.status == "retired")
    )
    assert not doomed, "use a model with no retirement scheduled:\n" + "\n".join(doomed)


@pytest.mark.parametrize("day", ["2026-11-30", "2026-12-02", "2027-06-01", "2028-01-01"])
def test_demo_shows_exactly_the_one_bad_line_on_any_date(day: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("OTB_REGISTRY", raising=False)
    out = tmp_path / "demo.jsonl"
    with clock.pinned(day):
        result = CliRunner().invoke(main, ["demo", "-o", str(out)])
    assert result.exit_code in (0, 1), result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    failed = [line["custom_id"] for line in lines if line["meta"]["outcome"] != "succeeded"]
    assert len(lines) == 9 and failed == ["bad-model"], result.output
    assert all(line["meta"]["completed_at"].startswith(day) for line in lines if "completed_at" in line["meta"])
    usage = [line["meta"]["usage"] for line in lines if "usage" in line["meta"]]
    assert any(u["cache_write_5m_tokens"] or u["cache_read_tokens"] for u in usage)  # the caching example ran
