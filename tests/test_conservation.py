"""Nothing lost, nothing counted twice: faulty NAS streams through real FreeRADIUS,
checked against an oracle computed from the packets alone (tests/conservation.py).

One FreeRADIUS per mode serves the whole module (journal and sync on MariaDB,
journal on SQLite); each test has users and NAS addresses of its own, so the
tests share the servers without seeing each other's sessions. Every stream
comes from a seeded generator: a failure names its seed and replays exactly.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from cli.lab import FreeRadius
from rlm_cap import ledger, store
from rlm_cap.packets import MAX_TOTAL, parse_accounting

from . import conservation as c
from .conftest import new_mariadb_database

G = c.GIGAWORD
N = "192.0.2.1"
P = c.Packet

# --------------------------------------------------------------------------- the oracle itself

HAND_STREAM = [
    P(c.START, N, "1", "a", session_time=0),
    P(c.INTERIM, N, "1", "a", 100, G + 5, 60),
    P(c.INTERIM, N, "1", "a", 100, G + 5, 60, delay=3),  # a retransmit
    P(c.INTERIM, N, "1", "a", 300, 2 * G, 180),  # overtook the 120 s one
    P(c.INTERIM, N, "1", "a", 200, G + 10, 120),  # late: its bytes are in the 180 s totals
    P(c.STOP, N, "1", "a", session_time=200),  # a Stop without counters
    P(c.INTERIM, N, "1", "a", 400, 2 * G + 7, 201),  # newer counters after that Stop: they count
    P(c.START, N, "1", "a", session_time=0),  # a new session on the stopped key
    P(c.INTERIM, N, "1", "a", 5, 50, 30),
    P(c.START, N, "1", "a", session_time=0),  # a repeated Start of an open session: nothing
    P(c.INTERIM, N, "2", "b", 7, 70, 600),  # no Start
    P(c.ON, N),  # the NAS rebooted: "2" is reused by a new session
    P(c.INTERIM, N, "2", "b", 1, 10, 30),
    P(c.INTERIM, "192.0.2.2", "2", "b", 3, 30, 30),  # another NAS, the same id: another session
    P(c.INTERIM, N, "9", "nobody", 9, 90, 30),  # no service
]
HAND_USERS = {"a": (405, 2 * G + 57), "b": (11, 110), "nobody": (9, 90)}
HAND_SESSIONS = sorted([(N, "1", "a", 400, 2 * G + 7), (N, "1", "a", 5, 50), (N, "2", "b", 7, 70),
                        (N, "2", "b", 1, 10), ("192.0.2.2", "2", "b", 3, 30), (N, "9", "nobody", 9, 90)])


def test_oracle_of_a_hand_written_stream():
    expected = c.oracle(HAND_STREAM)
    assert expected.users == HAND_USERS
    assert expected.sessions == HAND_SESSIONS


def test_oracle_reads_gigawords_from_the_wire():
    attributes = dict(P(c.INTERIM, N, "1", "a", 3 * G + 1, 2**64 - 1, 5).attributes())
    assert (attributes["Acct-Input-Gigawords"], attributes["Acct-Input-Octets"]) == (3, 1)
    assert c.oracle([P(c.INTERIM, N, "1", "a", 3 * G + 1, 2**64 - 1, 5)]).users == {"a": (3 * G + 1, 2**64 - 1)}


def test_faults_are_injected_as_asked_and_keep_their_limits():
    rng = random.Random(6001)
    users = [f"u{i}" for i in range(20)]
    base = c.traffic(rng, N, users, sessions_per_user=3, counterless_stop=0.2, reuse=0.3)
    assert c.faults_seen(base)["duplicates"] == c.faults_seen(base)["late"] == 0
    copied = c.retransmit(rng, base, 0.1)
    assert 0.06 * len(base) <= len(copied) - len(base) <= 0.14 * len(base)
    assert c.faults_seen(copied)["duplicates"] == len(copied) - len(base)
    moved = c.reorder(rng, base, 0.1)
    assert sorted(map(repr, moved)) == sorted(map(repr, base)) and moved != base
    assert c.faults_seen(moved)["late"] >= 0.03 * len(base)
    assert c.faults_seen(c.interims_after_stop(rng, base, 1.0))["interims_after_stop"] > \
        c.faults_seen(base)["interims_after_stop"]
    assert c.faults_seen(c.without_starts(rng, base, 0.5))["keys_without_start"] >= 10
    # A fault never changes what the NAS meant: the oracle's answer stays the same.
    for faulty in (copied, moved, c.interims_after_stop(rng, base, 1.0)):
        assert c.oracle(faulty) == c.oracle(base)
    # Nothing of a session arrives before its Start but the Start's own copies.
    for stream in (copied, moved):
        for i, p in enumerate(stream):
            if p.status == c.START:
                before = [q for q in stream[:i] if q.key == p.key]
                assert all(replace(q, delay=0) == replace(p, delay=0) for q in before) or \
                    any(q.status == c.STOP for q in before), (i, p, before)


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path / 'conservation.sqlite3'}")
    store.create_schema(engine)
    yield engine
    engine.dispose()


def apply_in_process(engine, stream) -> None:
    """The same packets through the module's parser and the ledger, without FreeRADIUS."""
    for p in stream:
        record = parse_accounting([(name, str(value)) for name, value in p.attributes()], time.time() - p.delay)
        store.run_in_transaction(engine, lambda conn: ledger.apply_record(conn, record))


def test_the_check_finds_every_kind_of_difference(sqlite_engine):
    engine = sqlite_engine
    c.add_services(engine, ["a", "b"], lambda user: "down" if user == "b" else "up+down")
    apply_in_process(engine, HAND_STREAM)
    expected = c.oracle(HAND_STREAM)
    assert c.problems(engine, expected) == []
    # Each tampering is reported, with what differs.
    with engine.begin() as conn:
        service = store.find_service(conn, "a")
        [period] = store.list_periods(conn, service["id"])
        bucket = store.bucket_rows(conn, service["id"])[0]
        conn.execute(store.buckets.update().where(store.buckets.c.id == bucket["id"])
                     .values(used=bucket["used"] + 1))
    assert [p for p in c.problems(engine, expected) if "buckets used" in p] != []
    with engine.begin() as conn:
        conn.execute(store.periods.update().where(store.periods.c.id == period["id"])
                     .values(download_bytes=period["download_bytes"] + 1))
    wrong = "\n".join(c.problems(engine, expected))
    assert "a: stored upload/download 405/8589934650, oracle 405/8589934649 (off by +0/+1)" in wrong
    assert "counted" in wrong
    with engine.begin() as conn:
        conn.execute(store.sessions.delete().where(store.sessions.c.username == "b",
                                                   store.sessions.c.nas == "192.0.2.2"))
        conn.execute(store.sessions.insert().values(
            nas=N, acct_session_id="x", username="nobody", input_total=1, output_total=1,
            last_time=datetime.now(timezone.utc), started_at=datetime.now(timezone.utc)))
    wrong = "\n".join(c.problems(engine, expected))
    assert "b: sessions differ from the oracle: missing [('192.0.2.2', '2', 'b', 3, 30)]" in wrong
    assert "nobody: has no service, yet sessions were stored" in wrong
    with pytest.raises(AssertionError, match="usage not conserved"):
        c.assert_conserved(engine, expected)


@pytest.mark.parametrize("seed", range(6100, 6104))
def test_oracle_and_ledger_agree_on_seeded_faulty_streams(sqlite_engine, seed):
    """Broad and fast: many faulty streams through the ledger in-process."""
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(8)]
    c.add_services(sqlite_engine, users, lambda user: "down" if user.endswith("3") else "up+down")
    stream = c.all_faults(rng, [N, "192.0.2.2"], users + ["nobody"], heavy=users[:1])
    apply_in_process(sqlite_engine, stream)
    c.assert_conserved(sqlite_engine, c.oracle(stream), users + ["nobody"])


@pytest.mark.parametrize("total", [2**62 + 1, MAX_TOTAL])
def test_period_sums_beyond_2_63_stay_exact_integers(sqlite_engine, total):
    """Two sessions of one service, each reporting ``total`` bytes down. Their sum
    must be held exactly, or a record that cannot be held must be refused loudly
    (2^62 + 1 is beyond packets.MAX_TOTAL); SQLite must never round it to a float."""
    c.add_services(sqlite_engine, ["x"])
    stream = [P(c.INTERIM, N, "a", "x", 0, total, 10), P(c.INTERIM, N, "b", "x", 0, total, 10)]
    applied = []
    for p in stream:
        try:
            apply_in_process(sqlite_engine, [p])
        except Exception:  # noqa: BLE001 - refusing what the database cannot hold is acceptable
            continue
        applied.append(p)
    c.assert_conserved(sqlite_engine, c.oracle(applied), ["x"])


def test_a_sum_sqlite_cannot_hold_is_refused_not_rounded(sqlite_engine):
    """Below the parser (MAX_TOTAL), the schema itself refuses a period sum beyond 2^63 - 1 on
    SQLite, which would otherwise store it as a float: the second record fails loudly."""
    from sqlalchemy.exc import IntegrityError

    from rlm_cap.counters import INTERIM, AccountingRecord
    c.add_services(sqlite_engine, ["x"])
    at = datetime.now(timezone.utc)

    def apply(session):
        record = AccountingRecord(INTERIM, N, session, "x", at, 0, 0, 2**62 + 1, 0, 10)
        store.run_in_transaction(sqlite_engine, lambda conn: ledger.apply_record(conn, record))
    apply("a")
    with pytest.raises(IntegrityError, match="CHECK constraint failed"):
        apply("b")
    with sqlite_engine.begin() as conn:
        (download,) = conn.execute(text("SELECT download_bytes FROM periods")).one()
    assert download == 2**62 + 1 and isinstance(download, int)


# --------------------------------------------------------------------------- through real FreeRADIUS

@pytest.fixture(scope="module")
def mariadb_database():
    """A database of this module's own on the test MariaDB server."""
    with new_mariadb_database(f"rlm_cap_test_cons_{os.getpid()}") as url:
        yield url


SERVERS = {"journal": ("journal", "mariadb"), "sync": ("sync", "mariadb"), "journal-sqlite": ("journal", "sqlite")}


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    """name -> (FreeRADIUS, engine), each started on first use and killed at the module's end."""
    base = tmp_path_factory.mktemp("conservation")
    started: dict[str, tuple[FreeRadius, object]] = {}

    def get(name: str):
        if name not in started:
            mode, backend = SERVERS[name]
            if backend == "mariadb":
                url = request.getfixturevalue("mariadb_database")
            else:
                url = f"sqlite:///{base / 'conservation.sqlite3'}"
                engine = store.make_engine(url)
                store.create_schema(engine)
                engine.dispose()
            started[name] = (FreeRadius(url, base / name, mode=mode, node=name).start(), store.make_engine(url))
        return started[name]
    yield get
    for server, engine in started.values():
        server.kill()
        engine.dispose()


_TAGS = itertools.count(1)


class Run:
    """A test's own users and NAS addresses on a shared server."""

    def __init__(self, server: FreeRadius, engine, users: int = 8, down_only: int = 1):
        self.server, self.engine = server, engine
        self.tag = next(_TAGS)
        self.users = [f"t{self.tag}-u{i}" for i in range(users)]
        self.nobody = f"t{self.tag}-nobody"
        c.add_services(engine, self.users, lambda u: "down" if u in self.users[-down_only:] else "up+down")

    def nas(self, n: int = 1) -> str:
        return f"10.{self.tag // 256}.{self.tag % 256}.{n}"

    def play_and_check(self, stream, timeout: float = 30):
        nas = c.UdpNas(self.server.acct_port, timeout=2)
        try:
            played = c.play(nas, stream)
        finally:
            nas.close()
        assert played.unanswered == 0, f"{played.unanswered} packets were not answered at once"
        c.wait_conserved(self.engine, c.oracle(stream), self.users + [self.nobody], timeout=timeout)
        return played


def run_on(servers, name, **kwargs) -> Run:
    server, engine = servers(name)
    return Run(server, engine, **kwargs)


MODES = ["journal", "sync"]


def test_hand_written_stream_through_freeradius(servers):
    run = run_on(servers, "journal", users=2)
    renamed = {"a": run.users[0], "b": run.users[1], "nobody": run.nobody}
    stream = [replace(p, user=renamed.get(p.user, ""), nas=run.nas(1) if p.nas == N else run.nas(2))
              for p in HAND_STREAM]
    assert c.oracle(stream).users[run.users[0]] == HAND_USERS["a"]
    run.play_and_check(stream)


@pytest.mark.parametrize("mode", MODES)
def test_ten_percent_retransmitted(servers, mode):
    rng = random.Random(6201)
    run = run_on(servers, mode)
    base = c.traffic(rng, run.nas(), run.users + [run.nobody], sessions_per_user=3, heavy=run.users[:1])
    stream = c.retransmit(rng, base, 0.1)
    assert c.faults_seen(stream)["duplicates"] >= 0.06 * len(base)
    run.play_and_check(stream)


@pytest.mark.parametrize("mode", MODES)
def test_ten_percent_reordered(servers, mode):
    rng = random.Random(6202)
    run = run_on(servers, mode)
    base = c.traffic(rng, run.nas(), run.users + [run.nobody], sessions_per_user=3, heavy=run.users[:1])
    stream = c.reorder(rng, base, 0.1)
    assert c.faults_seen(stream)["late"] >= 0.03 * len(base)
    run.play_and_check(stream)


@pytest.mark.parametrize("mode", MODES)
def test_interims_after_stop(servers, mode):
    """Reordered Interims behind their Stop (late: ignored) and Interims with newer
    counters after a Stop without counters (they count)."""
    rng = random.Random(6203)
    run = run_on(servers, mode)
    base = c.traffic(rng, run.nas(), run.users + [run.nobody], sessions_per_user=3, counterless_stop=0.3)
    stream = c.interims_after_stop(rng, base, 0.6)
    assert c.faults_seen(stream)["interims_after_stop"] >= 10
    run.play_and_check(stream)


@pytest.mark.parametrize("mode", MODES)
def test_sessions_without_start(servers, mode):
    rng = random.Random(6204)
    run = run_on(servers, mode)
    base = c.traffic(rng, run.nas(), run.users + [run.nobody], sessions_per_user=3, reuse=0.3)
    stream = c.without_starts(rng, base, 0.5)
    assert c.faults_seen(stream)["keys_without_start"] >= 6
    run.play_and_check(stream)


@pytest.mark.parametrize("mode", MODES)
def test_nas_reboot_with_sessions_open_and_reused_session_ids(servers, mode):
    rng = random.Random(6205)
    run = run_on(servers, mode)
    rebooting, steady = run.nas(1), run.nas(2)
    users = run.users + [run.nobody]
    first = c.retransmit(rng, c.traffic(rng, rebooting, users, sessions_per_user=2, open_at_end=0.7), 0.1)
    second = c.retransmit(rng, c.traffic(rng, rebooting, users, sessions_per_user=2), 0.1)
    other = c.traffic(rng, steady, users, sessions_per_user=2, open_at_end=0.5)
    stream = c.merge(rng, [first + [c.reboot(rebooting), c.reboot(rebooting)] + second, other])
    open_at_reboot = {p.key for p in first} - {p.key for p in first if p.status == c.STOP}
    assert len(open_at_reboot) >= 3
    assert {p.key for p in first} & {p.key for p in second}, "no Acct-Session-Id is reused"
    run.play_and_check(stream)
    with run.engine.begin() as conn:
        rows = [s for u in run.users for s in store.session_rows(conn, u) if s["nas"] == rebooting]
    reused = Counter((s["acct_session_id"], s["username"]) for s in rows)
    assert max(reused.values()) >= 2
    closed = {(s["acct_session_id"], s["username"]) for s in rows if s["closed"] == "nas-restart"}
    assert {(sid, user) for _, sid, user in open_at_reboot if user != run.nobody} <= closed


@pytest.mark.parametrize("name", ["journal", "sync", "journal-sqlite"])
def test_every_fault_at_once(servers, name):
    rng = random.Random(6206)
    run = run_on(servers, name, users=10, down_only=2)
    stream = c.all_faults(rng, [run.nas(1), run.nas(2)], run.users + [run.nobody], heavy=run.users[:2])
    seen = c.faults_seen(stream)
    assert seen["duplicates"] and seen["late"] and seen["interims_after_stop"] and seen["keys_without_start"]
    assert seen["reboots"] == 4 and seen["packets"] >= 300
    run.play_and_check(stream)
    with run.engine.begin() as conn:
        capped = store.find_service(conn, run.users[0])["cap_state"]
    assert capped == "capped", "the heavy user went past the 10 GB CAP: over-use must be part of the check"



@pytest.mark.parametrize("mode", MODES)
def test_totals_the_database_cannot_sum_do_not_stop_accounting(request, tmp_path, mode):
    """Three sessions of one service report 2^63 - 1 bytes down; together they pass
    the period's 2^64 - 1. They may be refused (quarantined, or skipped with a log
    line), but the NAS must be answered and everyone else's accounting must go on.
    (A value MariaDB refuses is not an outage: tests/test_module.py.)"""
    url = request.getfixturevalue("mariadb_database")
    engine = store.make_engine(url)
    server = FreeRadius(url, tmp_path / "r", mode=mode, node=f"overflow-{mode}").start()
    run = Run(server, engine, users=4)
    broken = f"t{run.tag}-broken"
    c.add_services(engine, [broken])
    huge = [P(c.INTERIM, run.nas(2), session, broken, 0, 2**63 - 1, 10) for session in ("h1", "h2", "h3")]
    nas = c.UdpNas(server.acct_port, timeout=2)
    try:
        assert all(nas.send(p) for p in huge), "the NAS must be answered (stored, or refused and quarantined)"
        stream = c.traffic(random.Random(6207), run.nas(1), run.users, sessions_per_user=2)
        assert c.play(nas, stream, retry_for=5).unanswered == 0
        c.wait_conserved(engine, c.oracle(stream), run.users, timeout=8)
    finally:
        nas.close()
        server.kill()
        engine.dispose()
