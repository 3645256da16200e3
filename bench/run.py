"""``make bench``: P1, P2 and P3 in one run, written into BENCHMARKS.md.

Runs on the machine's MariaDB (127.0.0.1:3306, database ``rlm_cap_test_bench``,
created here and wiped by every benchmark), loopback only, every run bounded.
The measured part of BENCHMARKS.md, between its ``results`` markers, is
replaced; the prose around it is kept.

    .venv/bin/python -m bench.run                 # the full run (about 5 minutes)
    .venv/bin/python -m bench.run --quick         # tiny counts: checks the scripts, measures nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from rlm_cap.raddb import PROJECT

from . import accounting, coa_latency, period_close

DEFAULT_DB = "mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1:3306/rlm_cap_test_bench"
BEGIN, END = "<!-- results: written by `make bench` -->", "<!-- end of results -->"

FULL = dict(rounds=3, count=100000, users=1000, window=32, crossings=200, services=100000)
QUICK = dict(rounds=1, count=300, users=50, window=8, crossings=3, services=200)


def create_database(db_url: str) -> None:
    url = make_url(db_url)
    admin = create_engine(url.set(database=""))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4"))
    admin.dispose()


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


def machine(db_url: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = next(int(line.split()[1]) // 1024**2 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    engine = create_engine(db_url)
    with engine.connect() as conn:
        mariadb = conn.execute(text("SELECT VERSION()")).scalar()
    engine.dispose()
    return dict(cpus=os.cpu_count(), cpu=cpu, memory_gib=memory, kernel=platform.release(),
                python=platform.python_version(), mariadb=mariadb,
                freeradius=_first_line(["freeradius", "-v"]).replace("radiusd: ", ""),
                load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()))


def p1_table(summary: dict, half: list[dict]) -> list[str]:
    lines = ["| accounting path | req/s (median) | vs rlm_sql | p50 ms | p99 ms | lost | totals exact "
             "| CPU ms per 1k req: FreeRADIUS / MariaDB / generator |",
             "|---|---|---|---|---|---|---|---|"]
    for path, row in summary.items():
        cpu = row["cpu_per_1k"]
        lines.append(f"| {path} | {row['rate']:,.0f} | {row['ratio']}× | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['lost']} | {'yes' if row['exact'] else 'NO'} | "
                     f"{cpu.get('freeradius', 0) * 1000:.0f} / {cpu.get('mariadb', 0) * 1000:.0f} / "
                     f"{cpu.get('generator', 0) * 1000:.0f} |")
    journal = summary.get("rlm_cap-journal")
    if journal and "applied_per_s" in journal:
        drained = (f" ({journal['drain_per_s']:,.0f} records/s)" if journal.get("drain_per_s") else "")
        lines += ["", f"Journal applier (rlm_cap-journal runs, medians): {journal['applied_per_s']:,.0f} records/s "
                      f"applied from the first request to the last record applied; "
                      f"{journal['backlog_at_end_pct']} % of the bytes still in the journal when the load ended, "
                      f"applied {journal['drain_s']} s later{drained}."]
    if half:
        lines += ["", "Latency under a steady load: requests paced at a share of the path's best rate "
                      "(open loop):", "",
                  "| path | share of best | rate req/s | p50 ms | p99 ms | lost |", "|---|---|---|---|---|---|"]
        lines += [f"| {run['path']} | {run['share']:.0%} | {run['target_rate']:,} | {run['p50_ms']} | "
                  f"{run['p99_ms']} | {run['lost']} |" for run in half]
    return lines


def render(facts: dict, settings: dict, p1: tuple[dict, list], p2: dict, p3: dict, seconds: float) -> str:
    summary, half = p1
    lines = [BEGIN, "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min on: "
             f"{facts['cpus']} × {facts['cpu']}, {facts['memory_gib']} GiB, Linux {facts['kernel']}, "
             f"{facts['freeradius']}, MariaDB {facts['mariadb']}, Python {facts['python']} "
             f"(load average at start {facts['load_average']}).", "",
             f"### P1 — accounting throughput ({settings['rounds']} interleaved rounds, {settings['count']:,} "
             f"requests of {settings['users']:,} sessions per run, {settings['window']} in flight)", ""]
    lines += p1_table(summary, half)
    lines += ["", f"### P2 — interim crossing the CAP → CoA at the NAS ({p2['crossings']} crossings, "
                  f"one every {p2['spacing_s']} s, default settings)", "",
              f"p50 {p2['p50_ms']} ms, p99 {p2['p99_ms']} ms, max {p2['max_ms']} ms; "
              f"{p2['coas']} CoA for {p2['crossings']} crossings.", "",
              f"### P3 — period close of {p3['services']:,} services on MariaDB", "",
              f"{p3['first_pass_s']} s for the {p3['due']:,} services due ({p3['monthly_buckets']:,} monthly "
              f"buckets in all, {p3['rollover_buckets']:,} rollover buckets and {p3['restores']:,} restores "
              f"made); a second pass found {p3['due_again']} due in {p3['second_pass_s']} s.", "", END]
    return "\n".join(lines)


def write(markdown: Path, results: str) -> None:
    current = markdown.read_text() if markdown.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in current or END not in current:
        current += f"\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    markdown.write_text(pattern.sub(lambda _: results, current, count=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=DEFAULT_DB, help="a MariaDB database the benchmarks may wipe")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, nothing written")
    parser.add_argument("--output", default=str(PROJECT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    create_database(args.db)
    facts = machine(args.db)
    started = time.monotonic()
    common = dict(db_url=args.db, count=settings["count"], users=settings["users"], window=settings["window"],
                  time_limit=120)
    runs = accounting.rounds(accounting.DEFAULT_PATHS, settings["rounds"], **common)
    summary = accounting.summary(runs)
    half = accounting.half_rate(summary, **common)
    p2 = coa_latency.measure(args.db, settings["crossings"], 0.2 if not args.quick else 0.05)
    print(p2, flush=True)
    p3 = period_close.measure(args.db, settings["services"])
    print(p3, flush=True)
    results = render(facts, settings, (summary, half), p2, p3, time.monotonic() - started)
    print(results)
    if not args.quick:
        write(Path(args.output), results)
    exact = all(row["lost"] == 0 and row["exact"] for row in summary.values())
    return 0 if exact and p2["coas"] == p2["crossings"] and p3["due_again"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
