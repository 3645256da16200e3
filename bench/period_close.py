"""Period close of many services on one database: rollover, usage reset, restore.

Prepares N services, each with last month's period and a part-used monthly
bucket (every tenth capped), then times one ``ledger.close_periods`` pass and
a second one (idempotent: must change nothing).

    .venv/bin/python -m bench.period_close --db mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1/rlm_cap_test_bench --services 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

from sqlalchemy import func, select

from rlm_cap import ledger, store

GB = 10**9


def prepare(db_url: str, count: int) -> None:
    engine = store.make_engine(db_url)
    store.metadata.drop_all(engine)
    store.create_schema(engine)
    october, november = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc)
    with engine.begin() as conn:
        plan = store.add_plan(conn, name="Bench 10GB", monthly_limit=10 * GB, action="reduce", reduce_percent=50,
                              normal_rate="10M/20M", rollover=True)
        customer = store.add_customer(conn, "bench", october)
    chunk = 10000
    for first in range(0, count, chunk):
        ids = range(first + 1, min(first + chunk, count) + 1)
        with engine.begin() as conn:
            conn.execute(store.services.insert(), [dict(id=i, customer_id=customer, plan_id=plan, username=f"u{i}",
                                                        cap_state="capped" if i % 10 == 0 else "ok",
                                                        created_at=october) for i in ids])
            conn.execute(store.periods.insert(), [dict(service_id=i, period_start=october, period_end=november)
                                                  for i in ids])
            conn.execute(store.buckets.insert(), [dict(service_id=i, kind="monthly", size=10 * GB,
                                                       used=10 * GB if i % 10 == 0 else (i % 9) * GB,
                                                       valid_from=october, valid_until=november,
                                                       period_start=october, origin="plan", created_at=october)
                                                  for i in ids])
    engine.dispose()


def measure(db_url: str, services: int = 100000) -> dict:
    """Close October for ``services`` services on 1 November, twice (the second pass finds nothing due)."""
    prepare(db_url, services)
    engine = store.make_engine(db_url)
    now = datetime(2026, 11, 1, 0, 1, tzinfo=timezone.utc)
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        due = store.run_in_transaction(engine, lambda conn: ledger.close_periods(conn, now))
        timings.append((due, time.perf_counter() - started))
    with engine.begin() as conn:
        counts = {kind: conn.execute(select(func.count()).select_from(store.buckets)
                                     .where(store.buckets.c.kind == kind)).scalar()
                  for kind in ("monthly", "rollover")}
        restores = conn.execute(select(func.count()).select_from(store.actions)).scalar()
    engine.dispose()
    return dict(services=services, first_pass_s=round(timings[0][1], 2), due=timings[0][0],
                second_pass_s=round(timings[1][1], 2), due_again=timings[1][0],
                monthly_buckets=counts["monthly"], rollover_buckets=counts["rollover"], restores=restores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database this benchmark may wipe")
    parser.add_argument("--services", type=int, default=100000)
    args = parser.parse_args(argv)
    if not 1 <= args.services <= 1_000_000:
        parser.error("--services is bounded to 1..1,000,000")
    result = measure(args.db, args.services)
    print(f"services={result['services']} db={args.db.split('://')[0]} first_pass={result['first_pass_s']}s "
          f"(due {result['due']}) second_pass={result['second_pass_s']}s (due {result['due_again']}) "
          f"monthly_buckets={result['monthly_buckets']} rollover_buckets={result['rollover_buckets']} "
          f"restores={result['restores']}")
    return 0 if result["due"] == args.services and result["due_again"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
