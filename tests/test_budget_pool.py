"""A key's budget shared by its batches (their pool) on a real redis-server: the calls in flight of one batch hold
against another's, every commit adds to the key's spend in the same script, and a crashed holder's hold lapses.
The whole road (API, workers, emulator) is in tests/api/test_key_budget_api.py."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from producer.client import Client
from producer.options import SubmitOptions
from producer.submit import submit
from worker.batch import Batch
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT
from .test_store_redis import chat, result

CAP = 10_000_000  # pico-dollars: $0.00001
LINE = 2_000_000  # what result(..., "0.000002") spent


@pytest.fixture
def client(real_redis, redis_server, registry) -> Client:
    return Client(real_redis, Settings(redis_url=redis_server.url, registry_path=ROOT / "registry.json"), registry)


def pooled(client: Client, n: int = 3, *, max_cost: Decimal | None = None) -> str:
    """A batch of tenant acme, whose key has a budget of CAP."""
    options = SubmitOptions(pool="acme", pool_max_cost=Decimal(CAP).scaleb(-12), max_cost=max_cost)
    raw = [json.dumps(chat(f"r{i}")).encode() for i in range(n)]
    return submit(client.conn, client.settings, client.registry, raw, options).batch_id


def spent(store: Store, key: str) -> int:
    return int(store.conn.hget(key, "spent_pico") or 0)


def test_a_batch_names_its_pool_and_the_keys_budget_for_its_workers(client):
    batch = Batch.load(client.store, pooled(client))
    assert (batch.pool, batch.pool_max_pico, batch.max_cost_pico, batch.budgeted) == ("acme", CAP, None, True)
    plain = Batch.load(client.store, client.submit([chat("a")]))
    assert (plain.pool, plain.pool_max_pico, plain.budgeted) == ("", None, False)


def test_the_calls_of_two_batches_of_a_key_hold_against_its_one_budget(client):
    store, a, b = client.store, pooled(client), pooled(client)
    tenant = store.keys.tenant("acme")
    assert store.reserve(a, "r0", 6_000_000, None, pool="acme", pool_max_pico=CAP) == 1
    assert store.reserve(b, "r0", 5_000_000, None, pool="acme", pool_max_pico=CAP) == -1  # fits once a's call settles
    assert store.reserve(b, "r0", 4_000_000, None, pool="acme", pool_max_pico=CAP) == 1  # 6 + 4 of 10 held
    assert store.reserve(b, "r1", 11_000_000, None, pool="acme", pool_max_pico=CAP) == 0  # never

    assert store.commit(a, "r0", result("r0", "x0"), "succeeded", pool="acme")
    store.release(a, "r0", "acme")
    assert spent(store, tenant) == spent(store, store.keys.batch(a)) == LINE  # in the same script
    assert store.reserve(a, "r1", 5_000_000, None, pool="acme", pool_max_pico=CAP) == -1  # 2 spent + 4 held + 5
    assert store.reserve(a, "r1", 4_000_000, None, pool="acme", pool_max_pico=CAP) == 1
    assert store.reserve(a, "r2", 9_000_000, None, pool="acme", pool_max_pico=CAP) == 0  # 2 spent + 9 > 10

    codes = store.commit_many(b, [("r1", result("r1", "x1"), "succeeded"), ("r2", result("r2", "x2"), "succeeded")],
                              pool="acme")  # one group: its sum added once
    assert codes == [1, 1] and spent(store, tenant) == 3 * LINE and spent(store, store.keys.batch(b)) == 2 * LINE
    store.commit(b, "r2", result("r2", "another answer"), "succeeded", pool="acme")  # a duplicate run, paid twice
    assert spent(store, tenant) == 4 * LINE
    store.commit(client.submit([chat("z")]), "z", result("z", "x3"), "succeeded")  # no pool: not the key's
    assert spent(store, tenant) == 4 * LINE


def test_a_call_holds_against_its_batch_budget_and_its_keys_both(client):
    store, bid = client.store, pooled(client, max_cost=Decimal("0.000003"))
    assert store.reserve(bid, "r0", 4_000_000, 3_000_000, pool="acme", pool_max_pico=CAP) == 0  # the batch's budget
    assert store.reserve(bid, "r0", 3_000_000, 3_000_000, pool="acme", pool_max_pico=CAP) == 1
    held = store.conn.hgetall(store.keys.tenant_reserved("acme"))
    assert list(held) == [f"{bid} r0".encode()] and store.conn.hexists(store.keys.reservations(bid), "r0")
    store.release(bid, "r0", "acme")
    assert not store.conn.exists(store.keys.tenant_reserved("acme"), store.keys.reservations(bid))


def test_a_crashed_holders_hold_on_the_keys_budget_lapses(client, real_redis):
    store, a, b = client.store, pooled(client), pooled(client)
    lease = store.keys.lease("chunk-of-a")
    real_redis.set(lease, "token")
    assert store.reserve(a, "r0", 9_000_000, None, pool="acme", pool_max_pico=CAP, lease=lease) == 1
    assert store.reserve(b, "r0", 5_000_000, None, pool="acme", pool_max_pico=CAP) == -1
    real_redis.delete(lease)  # a's worker died: its lease lapses, never released
    assert store.reserve(b, "r0", 5_000_000, None, pool="acme", pool_max_pico=CAP) == 1
    assert f"{a} r0".encode() not in real_redis.hgetall(store.keys.tenant_reserved("acme"))

    assert store.reserve(a, "r1", 5_000_000, None, pool="acme", pool_max_pico=CAP, hold_for=0) == 1  # no lease
    assert store.reserve(a, "r2", 1_000_000, None, pool="acme", pool_max_pico=CAP) == -1
    time.sleep(1.1)  # past its deadline, on Redis's clock
    assert store.reserve(a, "r2", 1_000_000, None, pool="acme", pool_max_pico=CAP) == 1
    assert 0 < real_redis.ttl(store.keys.tenant_reserved("acme"))  # the holds never outlive their deadlines


def test_a_hold_that_fits_costs_the_same_however_many_calls_hold(client, real_redis):
    """Each budget keeps the sum of its holds (`held_pico`): a call that fits on the sum does not look at
    the other holds. Scanning them all (and asking whether each holder still lives) on every hold made a
    key with a budget quadratic: 59 EXISTS a call at 1,000 concurrent calls (bench.http --key-max-cost)."""
    store, a = client.store, pooled(client, n=1)
    tenant = store.keys.tenant("acme")
    many = 1_000
    for i in range(many):
        real_redis.set(f"otb:lease:job{i}", "owner")
        assert store.reserve(a, f"c{i}", 1, None, pool="acme", pool_max_pico=CAP, lease=f"otb:lease:job{i}") == 1
    assert int(real_redis.hget(tenant, "held_pico")) == many
    before = real_redis.info("commandstats").get("cmdstat_exists", {}).get("calls", 0)
    assert store.reserve(a, "one more", 1, None, pool="acme", pool_max_pico=CAP) == 1
    assert real_redis.info("commandstats").get("cmdstat_exists", {}).get("calls", 0) == before
    for i in range(many):
        store.release(a, f"c{i}", "acme")
    assert int(real_redis.hget(tenant, "held_pico")) == 1  # "one more" holds on
    store.release(a, "one more", "acme")
    store.release(a, "one more", "acme")  # twice: the second changes nothing
    assert int(real_redis.hget(tenant, "held_pico")) == 0


def test_a_dead_holders_share_of_the_sum_goes_when_a_call_would_not_fit(client, real_redis):
    """A worker died holding most of the key's budget: its hold stays in the sum until a call does not fit
    on it; then the holds are recounted, the dead one dropped, and the call is held."""
    store, a = client.store, pooled(client, n=1)
    tenant = store.keys.tenant("acme")
    real_redis.set("otb:lease:dead", "owner")
    assert store.reserve(a, "big", 8_000_000, None, pool="acme", pool_max_pico=CAP, lease="otb:lease:dead") == 1
    assert store.reserve(a, "small", 1_000_000, None, pool="acme", pool_max_pico=CAP) == 1  # fits on the sum
    assert store.reserve(a, "wait", 3_000_000, None, pool="acme", pool_max_pico=CAP) == -1  # 8 + 1 + 3 > 10
    real_redis.delete("otb:lease:dead")  # its worker died: the lease lapsed
    assert store.reserve(a, "wait", 3_000_000, None, pool="acme", pool_max_pico=CAP) == 1
    assert int(real_redis.hget(tenant, "held_pico")) == 4_000_000
    assert set(real_redis.hkeys(store.keys.tenant_reserved("acme"))) == {f"{a} small".encode(), f"{a} wait".encode()}
    store.release(a, "big", "acme")  # the dead worker's release, late: already dropped, the sum stays right
    assert int(real_redis.hget(tenant, "held_pico")) == 4_000_000


def test_a_batch_budget_keeps_its_sum_on_the_batch_record_and_never_revives_a_gone_batch(client, real_redis):
    store = client.store
    bid = pooled(client, n=1, max_cost=Decimal("0.000005"))  # its own budget: 5,000,000 pico
    assert store.reserve(bid, "r0", 2_000_000, 5_000_000, pool="acme", pool_max_pico=CAP) == 1
    assert int(real_redis.hget(store.keys.batch(bid), "held_pico")) == 2_000_000
    store.release(bid, "r0", "acme")
    assert int(real_redis.hget(store.keys.batch(bid), "held_pico")) == 0
    real_redis.delete(store.keys.batch(bid))  # expired meanwhile
    store.reserve(bid, "r1", 2_000_000, 5_000_000, pool="acme", pool_max_pico=CAP)
    store.release(bid, "r1", "acme")
    assert not real_redis.exists(store.keys.batch(bid))


def test_a_budget_past_two_to_the_53_pico_dollars_is_held_exactly(client):
    """Lua's numbers are doubles: past 2^53 pico (about $9,007) a sum rounds. A key with a $10,000 budget
    that spent 2^53 pico may take 3 more pico, not 4 (in doubles, 2^53 + 3 rounds to 2^53 + 4 and 4 fit)."""
    store, bid = client.store, pooled(client)
    tenant = store.keys.tenant("acme")
    big = 2 ** 53
    store.conn.hset(tenant, "spent_pico", big)
    assert store.reserve(bid, "r0", 4, None, pool="acme", pool_max_pico=big + 3) == 0
    assert store.reserve(bid, "r0", 3, None, pool="acme", pool_max_pico=big + 3) == 1
    assert store.reserve(bid, "r1", 1, None, pool="acme", pool_max_pico=big + 3) == -1  # 3 held: fits once it settles
    store.conn.hset(tenant, "held_pico", 10 ** 18 + 3)  # a sum off by a lot: recounted, written back as an integer
    assert store.reserve(bid, "r1", 1, None, pool="acme", pool_max_pico=big + 5) == 1
    assert store.conn.hget(tenant, "held_pico") == b"4"
    store.release(bid, "r0", "acme")
    store.release(bid, "r1", "acme")
    assert store.conn.hget(tenant, "held_pico") == b"0"
    huge = 10 ** 18  # a million dollars in flight: the recounted sum is written as an integer Redis can add to
    assert store.reserve(bid, "r2", huge, None, pool="acme", pool_max_pico=2 * huge) == 1
    assert store.reserve(bid, "r3", huge, None, pool="acme", pool_max_pico=2 * huge) == -1  # recounted: r2 holds
    assert store.conn.hget(tenant, "held_pico") == str(huge).encode()
    store.release(bid, "r2", "acme")
    assert store.conn.hget(tenant, "held_pico") == b"0"
