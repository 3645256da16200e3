"""Faults survived end to end: database killed, FreeRADIUS killed, two FreeRADIUS nodes.

Each test ends by checking the totals against what the NAS sent: nothing lost,
nothing counted twice.
"""

from __future__ import annotations

import threading

import pytest

from rlm_cap import store

from .conftest import make_world
from .harness import FreeRadius, Nas, OwnMariaDB, wait_for
from .test_e2e_radius import USER, totals, wait_totals

STEP_DOWN, STEP_UP = 1_000_000, 10_000


@pytest.fixture
def own_mariadb(tmp_path):
    database = OwnMariaDB(tmp_path / "mariadb").install()
    yield database
    database.kill()


@pytest.fixture
def on_own_mariadb(own_mariadb, tmp_path):
    """start(mode) -> (engine, FreeRADIUS) on a MariaDB of the test's own, with alice's service."""
    engine = store.make_engine(own_mariadb.url)
    make_world(engine)
    servers = []

    def start(mode):
        servers.append(FreeRadius(own_mariadb.url, tmp_path / "r", mode=mode).start())
        return engine, servers[-1]
    yield start
    for server in servers:
        server.kill()
    engine.dispose()


def assert_conserved(engine, username=USER) -> None:
    """Every counted byte is in exactly one bucket, or in recorded over-use or free frame time."""
    with engine.begin() as conn:
        service = store.find_service(conn, username)
        periods = store.list_periods(conn, service["id"])
        used = sum(b["used"] for b in store.bucket_rows(conn, service["id"]))
    counted = sum(p["counted_bytes"] for p in periods)
    assert used + sum(p["overuse_bytes"] + p["free_bytes"] for p in periods) == counted


def interim(nas: Nas, i: int, session="s1", user=USER) -> bool:
    return nas.accounting("Interim-Update", session, user, down=i * STEP_DOWN, up=i * STEP_UP, session_time=i * 10)


def retransmit_until_answered(nas: Nas, i: int, timeout: float = 60, **kwargs) -> None:
    """A NAS retransmits an unanswered request (with a new Acct-Delay-Time, as RFC 2866 says)."""
    attempt = {"n": 0}

    def send():
        attempt["n"] += 1
        return nas.accounting("Interim-Update", kwargs.get("session", "s1"), kwargs.get("user", USER),
                              down=i * STEP_DOWN, up=i * STEP_UP, session_time=i * 10, delay=attempt["n"])
    wait_for(send, timeout=timeout, interval=0.2, what=f"interim {i} to be answered")


def test_sync_mode_database_killed_mid_stream_nas_retransmits(own_mariadb, on_own_mariadb):
    engine, server = on_own_mariadb("sync")
    nas = Nas(server, timeout=1, retries=1)
    assert nas.accounting("Start", "s1", USER)
    for i in range(1, 6):
        assert interim(nas, i)
    own_mariadb.kill()
    assert not interim(nas, 6), "answered while the database was down: that record is not durable"
    own_mariadb.start()
    retransmit_until_answered(nas, 6)
    for i in range(7, 11):
        assert interim(nas, i)
    assert totals(engine)[:2] == (10 * STEP_UP, 10 * STEP_DOWN)
    assert_conserved(engine)
    assert "database unavailable" in server.log


def test_journal_mode_answers_through_a_database_outage_and_applies_the_backlog(own_mariadb, on_own_mariadb):
    engine, server = on_own_mariadb("journal")
    nas = Nas(server, timeout=2, retries=1)
    assert nas.accounting("Start", "s1", USER)
    for i in range(1, 6):
        assert interim(nas, i)
    wait_totals(engine, (5 * STEP_UP, 5 * STEP_DOWN))
    own_mariadb.kill()
    for i in range(6, 21):
        assert interim(nas, i), "journal mode must keep answering while the database is down"
    own_mariadb.start()
    wait_totals(engine, (20 * STEP_UP, 20 * STEP_DOWN), timeout=60)
    assert_conserved(engine)
    assert "database unavailable" in server.log and "database back" in server.log


def test_freeradius_killed_mid_stream_counts_every_answered_packet_once(db_url, engine, world, tmp_path):
    # Before the kill the applier looks only once a minute, so the journal surely
    # holds answered records that are not in the database yet; after it, often.
    server = FreeRadius(db_url, tmp_path / "r", mode="journal", settings={"apply_interval": "60"}).start()
    nas = Nas(server, timeout=1, retries=1)
    sent = 0
    try:
        assert nas.accounting("Start", "s1", USER)
        for i in range(1, 201):
            if i == 120:
                assert totals(engine)[1] < 119 * STEP_DOWN, "nothing was pending at the kill"
                server.kill()  # SIGKILL in the middle of the stream
                server.settings["apply_interval"] = "0.01"
            if not interim(nas, i):
                # Not answered: the NAS retransmits once FreeRADIUS is back.
                server.start()
                retransmit_until_answered(nas, i)
            sent = i
        wait_totals(engine, (sent * STEP_UP, sent * STEP_DOWN))
        assert_conserved(engine)
    finally:
        server.kill()


def test_two_freeradius_nodes_on_one_mariadb_lose_no_update(request, tmp_path):
    url = request.getfixturevalue("mariadb_url")
    engine = store.make_engine(url)
    from .conftest import _wipe
    _wipe(engine)
    make_world(engine)
    nodes = [FreeRadius(url, tmp_path / f"r{n}", node=f"node{n}").start() for n in (1, 2)]
    try:
        steps = 60

        def stream(n):
            nas = Nas(nodes[n], address=f"192.0.2.{n + 1}")
            assert nas.accounting("Start", f"n{n}", USER)
            for i in range(1, steps + 1):
                assert interim(nas, i, session=f"n{n}")

        threads = [threading.Thread(target=stream, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wait_totals(engine, (2 * steps * STEP_UP, 2 * steps * STEP_DOWN))
        assert_conserved(engine)
    finally:
        for node in nodes:
            node.kill()
        engine.dispose()
