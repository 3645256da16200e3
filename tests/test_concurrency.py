"""Concurrent writers on one service lose no update (two connections, racing)."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

from rlm_cap import counters, ledger, store

from .conftest import GB, NOW
from .test_ledger import buckets_by_kind, period_row, record


def race(engine, work, count=2):
    """Run ``work(i)`` in ``count`` threads started together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def topup(engine, service_id, plan_id):
    def work(conn):
        ctx = ledger.load_context(conn, store.find_service(conn, service_id))
        return ledger.apply_topup(conn, ctx, "admin", "op", NOW,
                                  store.find_topup_plan(conn, plan_id, "5GB"))
    return store.run_in_transaction(engine, work)


def test_concurrent_topups_lose_no_money_or_data(engine, world):
    results = race(engine, lambda i: topup(engine, world["service_id"], world["plan_id"]), count=4)
    assert all(isinstance(r, int) for r in results), results
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("10.00")
        assert len(store.list_transactions(conn, world["customer_id"])) == 4
    assert len(buckets_by_kind(engine, world["service_id"])["topup"]) == 4


def test_concurrent_topups_respect_the_monthly_limit(engine, world):
    with engine.begin() as conn:
        store.set_setting(conn, "customer", world["customer_id"], "max_topups_per_month", "1")
    results = race(engine, lambda i: topup(engine, world["service_id"], world["plan_id"]), count=3)
    assert sum(isinstance(r, int) for r in results) == 1
    assert all(isinstance(r, ledger.Refused) for r in results if not isinstance(r, int)), results
    assert len(buckets_by_kind(engine, world["service_id"])["topup"]) == 1


def test_same_user_on_two_nas_at_once_counts_every_byte(engine, world):
    steps = 15

    def stream(i):
        nas = f"192.0.2.{i + 1}"
        store.run_in_transaction(engine, lambda c: ledger.apply_record(
            c, record(counters.START, NOW, nas=nas, session=f"s{i}")))
        for n in range(1, steps + 1):
            rec = record(counters.INTERIM, NOW + timedelta(seconds=n), n * 1000, n * 10, n, nas=nas,
                         session=f"s{i}")
            store.run_in_transaction(engine, lambda c: ledger.apply_record(c, rec))

    results = race(engine, stream)
    assert results == [None, None]
    row = period_row(engine, world["service_id"])
    assert row["counted_bytes"] == 2 * steps * 1010
    assert buckets_by_kind(engine, world["service_id"])["monthly"][0]["used"] == 2 * steps * 1010
    assert GB > row["counted_bytes"]


def test_topups_on_two_services_of_one_customer_share_the_balance(engine, world):
    with engine.begin() as conn:
        second = store.add_service(conn, world["customer_id"], world["plan_id"], "alice-office", "Office",
                                   NOW, "ok")
    services = [world["service_id"], second] * 2
    results = race(engine, lambda i: topup(engine, services[i], world["plan_id"]), count=4)
    assert all(isinstance(r, int) for r in results), results
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("10.00")
