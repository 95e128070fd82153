"""Key names and Lua scripts each have one home: keys.py and worker/lua/ (loaded by scripts.py)."""

from __future__ import annotations

import re

import fakeredis
import pytest

from worker.keys import Keys
from worker.scripts import Scripts, contracts, parse

from .conftest import ROOT


def test_the_layout_other_programs_read_is_the_readme_s():
    """Every key the README's *Redis layout* table names comes out of Keys under the default prefix."""
    k, bid = Keys(), "{id}"
    built = {*k.of_batch(bid), k.batches, k.open, k.all_events, k.agg_hour("{YYYYMMDDHH}"), k.agg_hours,
             k.lease("{job}"), k.parked, k.bucket("*"), k.cooldown("*"),
             k.api_key("{sha256}"), k.tenant("{name}"), k.tenant_reserved("{name}"), k.tenants, k.files("{name}"), k.file("{name}", "{id}"),
             k.api_batches("{name}"), k.api_batch("{name}", "{id}"), k.api_batch_key("{name}", "{sha256}"), k.api_open,
             k.webhook("{event id}"), k.webhook_once("{batch}", "{status}"), k.webhooks_due,
             k.native_due, k.native_lease(bid), k.native(bid), k.native_part(bid, "{n}"),  # type: ignore[arg-type]
             k.native_extras(bid), k.native_known}
    readme = ROOT.joinpath("README.md").read_text()
    section = readme.split("### Redis layout", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in re.findall(r"^\| (.+?) \|", section, re.M) for name in re.findall(r"`(otb:[^`]+)`", row)}
    assert len(documented) > 10 and documented <= built, documented - built


def test_keys_follow_the_prefix():
    assert Keys("tenant7").results("b1") == "tenant7:batch:b1:results"
    assert all(key.startswith("tenant7:") for key in Keys("tenant7").of_batch("b1"))


def test_every_script_documents_its_keys_and_argv_and_uses_them():
    found = contracts()
    assert set(found) == set(Scripts.__annotations__)
    for name, contract in found.items():
        assert contract.keys, name
        body = contract.text.split("\nlocal ", 1)[1]
        for arg in (*contract.keys, *contract.argv):
            assert re.search(rf"\b{arg}(_from)?\b", body), f"{name}.lua documents {arg} but does not use it"


def test_a_script_is_called_with_its_documented_names_only():
    scripts = Scripts(fakeredis.FakeRedis())
    with pytest.raises(TypeError, match="missing \\['closing'\\]"):
        scripts.close(batch="otb:batch:b1")
    with pytest.raises(TypeError, match="unknown \\['status'\\]"):
        scripts.close(batch="otb:batch:b1", closing="cancelling", status="x")
    with pytest.raises(TypeError, match="takes one value"):
        scripts.close(batch="otb:batch:b1", closing=["a", "b"])
    conn = fakeredis.FakeRedis()
    conn.hset("otb:batch:b1", "status", "in_progress")
    assert Scripts(conn).close(batch="otb:batch:b1", closing="cancelling") == b"cancelling"


def test_a_name_that_takes_the_rest_must_come_last():
    text = "-- x\n--\n-- KEYS:\n--   first...    many\n--   second      one\n-- ARGV: none\nreturn 0\n"
    with pytest.raises(ValueError, match="only the last"):
        parse("x.lua", text)
    ok = parse("y.lua", "-- y\n-- KEYS:\n--   batch   one\n--   others...   the rest\nlocal batch = KEYS[1]\n")
    assert ok.order({"batch": "a", "others": ["b", "c"]}) == (["a", "b", "c"], [])


def test_one_reading_of_a_line_feeds_the_record_the_aggregates_and_the_spend(registry):
    """Every token bucket and cost bucket of a committed line lands, once, in the batch record, its
    spend and the hourly aggregates, from the line alone."""
    from producer.client import Client
    from producer.report import Query, build_report
    from worker.results import success_line
    from worker.schemas import Cost, Usage
    from worker.settings import Settings

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client = Client(conn, Settings(registry_path=ROOT / "registry.json"), registry)
    bid = client.submit([{"custom_id": "a", "model": "google/gemini-3-flash", "messages": [{"role": "user", "content": "x"}]}])
    usage = Usage(input_tokens=11, cache_read_tokens=7, cache_write_5m_tokens=5, cache_write_1h_tokens=3,
                  output_tokens=13, reasoning_tokens=2)
    cost = Cost(input="0.000011", cache_read="0.0000007", cache_write="0.000013", output="0.00013", total="0.0001547")
    line = success_line(bid, "a", {}, request_id="r", usage=usage, cost=cost, meta={"model": "google/gemini-3-flash"})
    assert client.store.commit(bid, "a", line, "succeeded")
    status = client.status(bid)
    tokens = {"input_tokens": 11, "cache_read_tokens": 7, "cache_write_tokens": 8, "output_tokens": 13, "reasoning_tokens": 2}
    assert status["usage"] == tokens
    assert status["cost"] == line["cost"] and status["spent"] == "0.0001547"
    total = build_report(conn, "otb", Query(group_by=["model"]))["total"]
    assert total["tokens"] == {name.removesuffix("_tokens"): n for name, n in tokens.items()}
    assert total["cost"] == line["cost"] and total["succeeded"] == 1
