"""From an Interim-Update that crosses the CAP to the CoA at the NAS, with default settings.

FreeRADIUS + rlm_cap (journal mode) + ``cap-enforcer run`` (default intervals)
+ a RouterOS-like NAS simulator, all on loopback. Each of N subscribers gets
one interim that crosses its CAP; the time from sending it to the CoA arriving
at the NAS is measured. Bounded by N and a time limit.

    .venv/bin/python -m bench.coa_latency --db mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1/rlm_cap_test_bench --crossings 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from cli.lab import CapEnforcer, FreeRadius, Nas, NasSimulator, wait_for
from rlm_cap import store
from rlm_cap.module import Config

GB = 10**9
SECRET = "bench-secret"


def measure(db_url: str, crossings: int = 200, spacing: float = 0.2, time_limit: float = 300) -> dict:
    """Latency from each crossing interim to its CoA at the NAS, with default settings."""
    engine = store.make_engine(db_url)
    store.metadata.drop_all(engine)
    store.create_schema(engine)
    now = datetime.now(timezone.utc)
    with NasSimulator(secret=SECRET) as simulator, tempfile.TemporaryDirectory(prefix="rlm_cap-bench-") as tmp:
        with engine.begin() as conn:
            plan = store.add_plan(conn, name="Bench 1GB", monthly_limit=GB, action="reduce", reduce_percent=50,
                                  normal_rate="10M/20M")
            customer = store.add_customer(conn, "bench", now)
            for u in range(crossings):
                store.add_service(conn, customer, plan, f"user{u}", "", now, "ok")
            store.add_nas(conn, "127.0.0.1", SECRET, "sim", "mikrotik", simulator.port)
        # The product's defaults for FreeRADIUS and cap-enforcer, not the faster polling the tests use.
        server = FreeRadius(db_url, Path(tmp) / "raddb", node="bench", settings={
            "apply_interval": str(Config.apply_interval), "state_refresh": str(Config.state_refresh)}).start()
        enforcer = CapEnforcer(Path(tmp) / "enforcer", f"[database]\nurl = {db_url}\n\n[enforcer]\nnode = bench\n").start()
        try:
            nas = Nas(server, address="127.0.0.1")
            for u in range(crossings):
                assert nas.accounting("Start", f"b{u}", f"user{u}")
            sent = {}
            deadline = time.monotonic() + time_limit
            for u in range(crossings):
                sent[f"b{u}"] = time.monotonic()
                assert nas.accounting("Interim-Update", f"b{u}", f"user{u}", down=GB + 1, up=0, session_time=60)
                time.sleep(spacing)
                if time.monotonic() > deadline:
                    break
            wait_for(lambda: len(simulator.requests) >= len(sent), timeout=time_limit, interval=0.2,
                     what="every CoA")
        finally:
            enforcer.stop()
            server.stop()
            engine.dispose()
        latencies = sorted(r["received_at"] - sent[r["attributes"]["Acct-Session-Id"][0]]
                           for r in simulator.requests)
    return dict(crossings=len(latencies), coas=len(simulator.requests),
                p50_ms=round(latencies[len(latencies) // 2] * 1000),
                p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000),
                max_ms=round(latencies[-1] * 1000), spacing_s=spacing)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database this benchmark may wipe")
    parser.add_argument("--crossings", type=int, default=200)
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between two crossings")
    parser.add_argument("--time-limit", type=float, default=300)
    args = parser.parse_args(argv)
    if not 1 <= args.crossings <= 5000:
        parser.error("--crossings is bounded to 1..5000")
    result = measure(args.db, args.crossings, args.spacing, args.time_limit)
    print(f"crossings={result['crossings']} p50={result['p50_ms']}ms p99={result['p99_ms']}ms "
          f"max={result['max_ms']}ms (journal mode and cap-enforcer with default settings, "
          f"one crossing every {args.spacing} s)")
    return 0 if result["coas"] == result["crossings"] else 1


if __name__ == "__main__":
    sys.exit(main())
