"""P1: accounting throughput through real FreeRADIUS, rlm_cap against stock rlm_sql.

Each round runs every accounting path (``bench.servers``) once, the order
rotated from round to round, with the same pre-encoded requests and the same
in-flight window: realistic sessions (a Start each, then Interim-Updates whose
counters pass 2^32). Per run it reports answered requests per second, p50/p99
latency, lost requests, the CPU seconds of FreeRADIUS, MariaDB and the load
generator, and checks the stored totals against what the NAS sent. For
``rlm_cap-journal`` it also reports how fast the journal applier applied the
records and the backlog it had when the load ended.

Then the latency at half the highest rate: requests paced at half of each
path's best rate.

    .venv/bin/python -m bench.accounting --db mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1/rlm_cap_test_bench

Loopback only; the count, the window and a time limit bound every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rlm_cap import store
from rlm_cap.periods import months_after, period_at
from rlm_cap.settings import resolve

from . import load, servers

GB = 10**9
DEFAULT_PATHS = ("rlm_cap-journal", "rlm_sql", "rlm_cap-sync", "ok", "python-noop")


def prepare_rlm_cap(db_url: str, users: int) -> None:
    """A fresh schema, one plan, ``users`` services with this month's period open (the enforcer's job)."""
    engine = store.make_engine(db_url)
    store.metadata.drop_all(engine)
    store.create_schema(engine)
    now = datetime.now(timezone.utc)
    tz = resolve([]).tz
    period = period_at(now, tz)
    previous = period_at(period.start - timedelta(microseconds=1), tz)
    with engine.begin() as conn:
        plan = store.add_plan(conn, name="Bench 1TB", monthly_limit=1000 * GB, action="reduce",
                              reduce_percent=50, normal_rate="10M/20M")
        customer = store.add_customer(conn, "bench", now)
        ids = [store.add_service(conn, customer, plan, load.user(u), "", now, "ok") for u in range(users)]
        store.open_periods(conn, ids, period.start, period.end, previous.start, months_after(period.start, 1, tz),
                           now)
    engine.dispose()


def stored_download(db_url: str, path: str) -> int:
    if not path.startswith("rlm_cap-"):
        return servers.radacct_download(db_url)
    engine = store.make_engine(db_url)
    try:
        with engine.begin() as conn:
            return sum(row["download_bytes"] for row in conn.execute(store.periods.select()).mappings())
    finally:
        engine.dispose()


def mariadb_pid(db_url: str) -> int | None:
    engine = store.make_engine(db_url)
    try:
        with engine.connect() as conn:
            pid_file = conn.exec_driver_sql("SELECT @@pid_file").scalar()
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    finally:
        engine.dispose()


def run_once(path: str, db_url: str, count: int, users: int, window: int, time_limit: float,
             rate: float | None = None) -> dict:
    """One path, one run: start, load, wait for the totals, stop. Returns the measurements."""
    if path.startswith("rlm_cap-"):
        prepare_rlm_cap(db_url, users)
    elif path == "rlm_sql":
        servers.create_radacct(db_url)
    datagrams = load.requests(count, users)
    database = mariadb_pid(db_url)
    with tempfile.TemporaryDirectory(prefix="rlm_cap-bench-") as tmp:
        server = servers.start(path, Path(tmp), db_url)
        try:
            pids = {"freeradius": server.pid, "mariadb": database}
            before = {name: load.cpu_seconds(pid) for name, pid in pids.items() if pid}
            mine = time.process_time()
            result = (load.closed_loop(server.acct_port, datagrams, window, time_limit) if rate is None
                      else load.paced(server.acct_port, datagrams, rate, time_limit))
            cpu = {name: load.cpu_seconds(pid) - before[name] for name, pid in pids.items() if pid}
            cpu["generator"] = time.process_time() - mine
            measured = dict(path=path, sent=result.sent, answered=result.answered, lost=result.lost,
                            seconds=round(result.elapsed, 3), rate=round(result.rate),
                            p50_ms=round(result.percentile(0.5) * 1000, 2),
                            p99_ms=round(result.percentile(0.99) * 1000, 2),
                            cpu_per_1k={k: round(v / max(result.answered, 1) * 1000, 3) for k, v in cpu.items()})
            expected = load.expected_download(count, users) if path not in ("ok", "python-noop") else None
            if expected is not None:
                load_ended = time.monotonic()
                deadline = load_ended + time_limit
                first = stored_download(db_url, path)
                while stored_download(db_url, path) < expected and time.monotonic() < deadline:
                    time.sleep(0.05)
                stored = stored_download(db_url, path)
                measured["exact"] = stored == expected
                if path == "rlm_cap-journal":
                    drain = time.monotonic() - load_ended
                    backlog = 1 - first / expected if expected else 0.0
                    measured["backlog_at_end_pct"] = round(100 * backlog, 1)
                    measured["drain_s"] = round(drain, 2)
                    measured["applied_per_s"] = round(result.answered / (result.elapsed + drain))
                    # The journal's backlog applied per second once the load stopped: the applier's pace.
                    measured["drain_per_s"] = round(backlog * result.answered / drain) if drain > 0.05 else None
        finally:
            server.stop()
    return measured


def rounds(paths, rounds_: int, **kwargs) -> list[dict]:
    runs = []
    for r in range(rounds_):
        order = list(paths[r % len(paths):]) + list(paths[:r % len(paths)])
        for path in order:
            # Sync mode answers a few hundred a second: fewer requests, the same sessions.
            count = kwargs["count"] if path != "rlm_cap-sync" else max(kwargs["count"] // 30, kwargs["users"] * 2)
            run = run_once(path, **dict(kwargs, count=count))
            run["round"] = r + 1
            print(json.dumps(run), flush=True)
            runs.append(run)
    return runs


def summary(runs: list[dict]) -> dict[str, dict]:
    """Median of each path's rounds, and each round's ratio to rlm_sql of the same round."""
    by_path: dict[str, list[dict]] = {}
    for run in runs:
        by_path.setdefault(run["path"], []).append(run)
    base = {run["round"]: run["rate"] for run in by_path.get("rlm_sql", [])}
    table = {}
    for path, own in by_path.items():
        ratios = [run["rate"] / base[run["round"]] for run in own if base.get(run["round"])]
        table[path] = dict(
            rate=statistics.median(run["rate"] for run in own),
            ratio=round(statistics.median(ratios), 2) if ratios else None,
            p50_ms=statistics.median(run["p50_ms"] for run in own),
            p99_ms=statistics.median(run["p99_ms"] for run in own),
            lost=sum(run["lost"] for run in own), exact=all(run.get("exact", True) for run in own),
            cpu_per_1k={k: round(statistics.median(run["cpu_per_1k"].get(k, 0) for run in own), 3)
                        for k in own[0]["cpu_per_1k"]},
            **{k: statistics.median(run[k] for run in own)
               for k in ("applied_per_s", "backlog_at_end_pct", "drain_s", "drain_per_s")
               if k in own[0] and all(run[k] is not None for run in own)})
    return table


PACED = (("rlm_cap-journal", 0.5), ("rlm_sql", 0.5), ("rlm_cap-journal", 0.25))


def half_rate(table: dict[str, dict], **kwargs) -> list[dict]:
    """rlm_cap-journal and rlm_sql paced at half their best rate (and rlm_cap at a quarter):
    the latency under a steady load."""
    runs = []
    for path, share in [(p, s) for p, s in PACED if p in table]:
        run = run_once(path, **kwargs, rate=table[path]["rate"] * share)
        run["target_rate"] = round(table[path]["rate"] * share)
        run["share"] = share
        print(json.dumps(run), flush=True)
        runs.append(run)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a MariaDB database this benchmark may wipe")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"comma-separated, of {servers.PATHS}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=30000, help="requests per run")
    parser.add_argument("--users", type=int, default=2000, help="sessions the requests belong to")
    parser.add_argument("--window", type=int, default=32, help="requests in flight")
    parser.add_argument("--time-limit", type=float, default=120, help="seconds, per run")
    parser.add_argument("--half-rate", action="store_true", help="also measure latency at half the best rate")
    parser.add_argument("--json", help="write the runs and the summary to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1_000_000 or not 1 <= args.rounds <= 20 or not 1 <= args.window <= 1024:
        parser.error("bounded: --count 1..1,000,000, --rounds 1..20, --window 1..1024")
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(servers.PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose from {servers.PATHS}")

    common = dict(db_url=args.db, count=args.count, users=args.users, window=args.window,
                  time_limit=args.time_limit)
    runs = rounds(paths, args.rounds, **common)
    table = summary(runs)
    half = half_rate(table, **common) if args.half_rate else []
    for path, row in table.items():
        print(f"{path:16} {row['rate']:>7.0f} req/s  ratio {row['ratio']}  p50 {row['p50_ms']} ms  "
              f"p99 {row['p99_ms']} ms  lost {row['lost']}  exact {row['exact']}  cpu/1k {row['cpu_per_1k']}"
              + (f"  applied {row['applied_per_s']}/s, backlog at end {row['backlog_at_end_pct']} %, "
                 f"drained in {row['drain_s']} s ({row.get('drain_per_s')}/s)" if "applied_per_s" in row else ""))
    for run in half:
        print(f"{run['path']:16} at {run['target_rate']} req/s: p50 {run['p50_ms']} ms  p99 {run['p99_ms']} ms  "
              f"lost {run['lost']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(runs=runs, summary=table, half_rate=half), indent=1))
    ok = all(row["lost"] == 0 and row["exact"] for row in table.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
