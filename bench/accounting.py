"""Rough throughput of the accounting path through real FreeRADIUS (loopback only, bounded).

Starts FreeRADIUS with rlm_cap (``capctl radius run``) on free loopback ports
against a database, replays Interim-Updates of many sessions with a fixed
number of requests in flight, and reports answered requests per second, lost
requests, and how long the journal applier needed to drain the backlog.

    .venv/bin/python -m bench.accounting --db mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1/rlm_cap_bench \
        --mode journal --count 20000 --window 32

The count, the in-flight window and a time limit bound every run.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from pyrad import packet as radius_packet

from rlm_cap import store
from tests.harness import DICTIONARY, SECRET, FreeRadius, wait_for

GB = 10**9
STEP = 50_000_000  # bytes per interim: counters cross 2^32 after ~86 interims


def prepare(db_url: str, users: int) -> None:
    engine = store.make_engine(db_url)
    store.metadata.drop_all(engine)
    store.create_schema(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        plan = store.add_plan(conn, name="Bench 100GB", monthly_limit=100 * GB, action="reduce",
                              reduce_percent=50, normal_rate="10M/20M")
        customer = store.add_customer(conn, "bench", now)
        for u in range(users):
            store.add_service(conn, customer, plan, f"user{u}", "", now, "ok")
    engine.dispose()


def packets(count: int, users: int) -> list[bytes]:
    """Start per user, then Interim-Updates with growing counters that pass 2^32."""
    encoded = []
    for i in range(count):
        user, n = i % users, i // users
        request = radius_packet.AcctPacket(code=radius_packet.AccountingRequest, secret=SECRET, dict=DICTIONARY)
        request["User-Name"] = f"user{user}"
        request["Acct-Session-Id"] = f"b{user}"
        request["NAS-IP-Address"] = "192.0.2.1"
        if n == 0:
            request["Acct-Status-Type"] = "Start"
        else:
            total = n * STEP
            request["Acct-Status-Type"] = "Interim-Update"
            request["Acct-Output-Octets"], request["Acct-Output-Gigawords"] = total % 2**32, total >> 32
            request["Acct-Input-Octets"], request["Acct-Input-Gigawords"] = 0, 0
            request["Acct-Session-Time"] = n * 60
        request.id = i % 256
        encoded.append(request.RequestPacket())
    return encoded


def blast(port: int, datagrams: list[bytes], window: int, time_limit: float) -> tuple[int, float]:
    """Send with ``window`` requests in flight (one socket per slot, so ids never clash)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(window)]
    for s in sockets:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
    import selectors
    selector = selectors.DefaultSelector()
    for slot, s in enumerate(sockets):
        selector.register(s, selectors.EVENT_READ, slot)
    next_index, answered, in_flight = 0, 0, {}
    started = time.monotonic()
    deadline = started + time_limit

    def send(slot):
        nonlocal next_index
        if next_index < len(datagrams):
            sockets[slot].send(datagrams[next_index])
            in_flight[slot] = (next_index, time.monotonic())
            next_index += 1

    for slot in range(window):
        send(slot)
    while in_flight and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            slot = key.data
            try:
                key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            answered += 1
            in_flight.pop(slot, None)
            send(slot)
        now = time.monotonic()
        for slot, (_, sent_at) in list(in_flight.items()):
            if now - sent_at > 2.0:  # lost: move on, count it as unanswered
                in_flight.pop(slot)
                send(slot)
    elapsed = time.monotonic() - started
    for s in sockets:
        s.close()
    return answered, elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database this benchmark may wipe")
    parser.add_argument("--mode", choices=["journal", "sync"], default="journal")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=120)
    args = parser.parse_args(argv)
    if args.count > 1_000_000:
        parser.error("--count is bounded to 1,000,000")

    prepare(args.db, args.users)
    datagrams = packets(args.count, args.users)
    with tempfile.TemporaryDirectory(prefix="rlm_cap-bench-") as tmp:
        server = FreeRadius(args.db, Path(tmp) / "raddb", mode=args.mode, node="bench",
                            settings={"apply_interval": "0.02", "state_refresh": "2"}).start()
        try:
            answered, elapsed = blast(server.acct_port, datagrams, args.window, args.time_limit)
            engine = store.make_engine(args.db)
            # Each user's last interim carries its session's total download.
            expected = sum(((args.count - 1 - user) // args.users) * STEP
                           for user in range(min(args.users, args.count)))
            drain_started = time.monotonic()

            def applied():
                with engine.begin() as conn:
                    rows = conn.execute(store.periods.select()).mappings().all()
                return sum(r["download_bytes"] for r in rows)
            try:
                wait_for(lambda: applied() >= expected, timeout=args.time_limit, interval=0.2, what="drain")
                drained = time.monotonic() - drain_started
            except AssertionError:
                drained = float("nan")
            engine.dispose()
        finally:
            server.stop()
    rate = answered / elapsed if elapsed else 0
    print(f"mode={args.mode} db={args.db.split('://')[0]} sent={args.count} answered={answered} "
          f"lost={args.count - answered} window={args.window} elapsed={elapsed:.2f}s "
          f"rate={rate:.0f} req/s drain_after_load={drained:.2f}s")
    return 0 if answered == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
