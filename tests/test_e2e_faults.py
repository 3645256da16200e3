"""Faults survived end to end: the database killed, FreeRADIUS killed, a torn journal,
two FreeRADIUS nodes, cap-enforcers killed and racing.

Each accounting test sends a seeded faulty stream (tests/conservation.py) and
ends with the conservation check against the oracle: nothing lost, nothing
counted twice. The enforcer test ends with the outbox and the NAS's log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cli.lab import FreeRadius, NasSimulator, wait_for
from rlm_cap import store

from . import conservation as c
from .conftest import _wipe, make_world
from .harness import OwnMariaDB

USERS = [f"f-u{i}" for i in range(5)]
NOBODY = "f-nobody"
NASES = ["192.0.2.1", "192.0.2.2"]


def faulty_stream(seed: int, nases=NASES) -> list[c.Packet]:
    """~150 packets: reboots, retransmits, reordering, Interims after Stops, missing Starts."""
    return c.all_faults(random.Random(seed), nases, USERS + [NOBODY], heavy=USERS[:1])


@pytest.fixture
def own_mariadb(tmp_path):
    database = OwnMariaDB(tmp_path / "mariadb").install()
    yield database
    database.kill()


@pytest.fixture
def on_own_mariadb(own_mariadb, tmp_path):
    """start(mode) -> (engine, FreeRADIUS) on a MariaDB of the test's own, with the services."""
    engine = store.make_engine(own_mariadb.url)
    c.add_services(engine, USERS)
    servers = []

    def start(mode):
        servers.append(FreeRadius(own_mariadb.url, tmp_path / "r", mode=mode).start())
        return engine, servers[-1]
    yield start
    for server in servers:
        server.kill()
    engine.dispose()


def test_sync_mode_database_killed_mid_stream_nas_retransmits(own_mariadb, on_own_mariadb):
    engine, server = on_own_mariadb("sync")
    stream = faulty_stream(6301)
    kill_at = len(stream) // 2
    missed = []

    def database_back(index):
        missed.append(index)
        if own_mariadb.process.poll() is not None:
            own_mariadb.start()  # SIGKILLed: restarted while the NAS keeps retransmitting
    nas = c.UdpNas(server.acct_port, timeout=1)
    try:
        c.play(nas, stream, before={kill_at: own_mariadb.kill}, on_unanswered=database_back)
    finally:
        nas.close()
    assert missed and missed[0] == kill_at, "answered while the database was down: that record is not durable"
    assert set(missed) == {kill_at}, "only the packet sent into the outage waits for the database"
    c.assert_conserved(engine, c.oracle(stream), USERS + [NOBODY])
    assert "database unavailable" in server.log


def test_journal_mode_answers_through_a_database_outage_and_applies_the_backlog(own_mariadb, on_own_mariadb):
    engine, server = on_own_mariadb("journal")
    stream = faulty_stream(6302)
    down_at, up_at = len(stream) // 3, 2 * len(stream) // 3

    def kill():
        # Everything before the outage is in the database already; what follows is not.
        c.wait_conserved(engine, c.oracle(stream[:down_at]), USERS + [NOBODY])
        own_mariadb.kill()
    nas = c.UdpNas(server.acct_port, timeout=2)
    try:
        played = c.play(nas, stream, before={down_at: kill, up_at: own_mariadb.start})
    finally:
        nas.close()
    assert played.unanswered == 0, "journal mode must keep answering while the database is down"
    c.wait_conserved(engine, c.oracle(stream), USERS + [NOBODY], timeout=60)
    assert "database unavailable" in server.log and "database back" in server.log


def pending_then_kill(engine, server, answered):
    """SIGKILL FreeRADIUS once the journal surely holds answered records the database lacks."""
    def kill():
        assert c.problems(engine, c.oracle(answered()), USERS), "nothing was pending at the kill"
        server.kill()
        server.settings["apply_interval"] = "0.01"
    return kill


def test_freeradius_killed_mid_stream_counts_every_answered_packet_once(db_url, engine, tmp_path):
    # Before the kill the applier looks only once a minute, so the journal surely
    # holds answered records that are not in the database yet; after it, often.
    c.add_services(engine, USERS)
    server = FreeRadius(db_url, tmp_path / "r", mode="journal", settings={"apply_interval": "60"}).start()
    stream = faulty_stream(6303)
    kill_at = len(stream) // 2
    restarts = []

    def restart(index):
        if server.process.poll() is not None:  # not answered: the NAS retransmits once it is back
            restarts.append(index)
            server.start()
    nas = c.UdpNas(server.acct_port, timeout=1)
    try:
        c.play(nas, stream, before={kill_at: pending_then_kill(engine, server, lambda: stream[:kill_at])},
               on_unanswered=restart)
        assert restarts == [kill_at]
        c.wait_conserved(engine, c.oracle(stream), USERS + [NOBODY])
    finally:
        nas.close()
        server.kill()


def test_journal_truncated_mid_record_skips_it_with_a_log_line(tmp_path):
    """A crash that tears the last journal record: the torn line is skipped and logged, and
    nothing else is lost (the session's next packet carries the torn Interim's bytes)."""
    url = f"sqlite:///{tmp_path / 'torn.sqlite3'}"
    engine = store.make_engine(url)
    store.create_schema(engine)
    c.add_services(engine, USERS)
    server = FreeRadius(url, tmp_path / "r", mode="journal", settings={"apply_interval": "60"}).start()
    stream = faulty_stream(6304)
    # The torn record: an Interim whose session later sends newer counters.
    cut = next(i for i in range(len(stream) // 2, len(stream)) if stream[i - 1].status == c.INTERIM and any(
        q.key == stream[i - 1].key and q.up is not None and q.session_time > stream[i - 1].session_time
        for q in stream[i:]))
    nas = c.UdpNas(server.acct_port, timeout=2)
    try:
        assert c.play(nas, stream[:cut]).unanswered == 0
        pending_then_kill(engine, server, lambda: stream[:cut])()
        journal = server.journal_dir / "journal.1"
        data = journal.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        torn = stream[cut - 1]
        assert f'"{torn.session}","{torn.user}"'.encode() in data[last:], "the last record is not the last packet"
        with open(journal, "r+b") as handle:
            handle.truncate(last + (len(data) - last) // 2)
        server.start()
        assert c.play(nas, stream[cut:]).unanswered == 0
        c.wait_conserved(engine, c.oracle(stream), USERS + [NOBODY])
        skipped = [line for line in server.output if "damaged record skipped" in line]
        assert len(skipped) == 1 and f"journal.1 offset {last}:" in skipped[0], server.log[-3000:]
    finally:
        nas.close()
        server.kill()
        engine.dispose()


def test_two_freeradius_nodes_on_one_mariadb_lose_no_update(mariadb_url, tmp_path):
    engine = store.make_engine(mariadb_url)
    _wipe(engine)
    c.add_services(engine, USERS)
    nodes = [FreeRadius(mariadb_url, tmp_path / f"r{n}", node=f"node{n}").start() for n in (1, 2)]
    # The same users on both nodes at once, each node behind NAS of its own.
    streams = [faulty_stream(6305 + n, nases=[f"192.0.2.{10 * n + 1}", f"192.0.2.{10 * n + 2}"]) for n in (0, 1)]
    errors = []

    def send(n):
        nas = c.UdpNas(nodes[n].acct_port, timeout=2)
        try:
            assert c.play(nas, streams[n]).unanswered == 0
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            nas.close()
    try:
        threads = [threading.Thread(target=send, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not any(t.is_alive() for t in threads), errors
        c.wait_conserved(engine, c.oracle(streams[0] + streams[1]), USERS + [NOBODY])
    finally:
        for node in nodes:
            node.kill()
        engine.dispose()


# --------------------------------------------------------------------------- cap-enforcer

ENFORCER = str(Path(sys.executable).parent / "cap-enforcer")
NAS_SECRET = "nas-s3cret"
CONCURRENCY = 2


class ObservedNas(NasSimulator):
    """The RouterOS-like simulator; ``on_request(pkt)`` runs as each request arrives,
    before it is recorded and answered."""

    on_request = None

    def HandleCoaPacket(self, pkt):
        if self.on_request is not None:
            self.on_request(pkt)
        super().HandleCoaPacket(pkt)


def start_enforcer(db_url: str, node: str, tmp_path: Path) -> tuple[subprocess.Popen, list[str]]:
    config = tmp_path / f"{node}.conf"
    config.write_text(f"[enforcer]\nnode = {node}\ncoa_interval = 0.1\nlease = 2\ncoa_timeout = 1\n"
                      f"coa_attempts = 1\nbatch_size = 10\nconcurrency = {CONCURRENCY}\nnotify_interval = 3600\n"
                      "period_interval = 3600\nhousekeeping_interval = 3600\n")
    process = subprocess.Popen([ENFORCER, "--db", db_url, "run"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "RLM_CAP_CONFIG": str(config)})
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(line.rstrip() for line in process.stdout), daemon=True).start()
    return process, output


def test_two_enforcers_one_killed_mid_batch_every_action_done_once(mariadb_url, tmp_path):
    """Two cap-enforcer processes share the outbox; one is SIGKILLed while its CoA is
    at the NAS, with more of its batch claimed and unsent; the other finishes.

    What is guaranteed, and asserted:
    - in the outbox, every action is finished exactly once, by the enforcer that
      holds its lease (none lost, none left pending, none failed);
    - at the NAS, every CoA arrives at least once. A CoA arrives twice only when
      its enforcer died between sending it and committing it as done: the lease
      runs out and the survivor sends it again. So the second copies are exactly
      the dead enforcer's actions in flight at the kill (at most its
      ``concurrency``, and always the one the NAS held when the kill came).
      Exactly-once on the wire would need the NAS to take part; a rate CoA is
      idempotent on the NAS (it sets the same rate again), so at-least-once is
      the right promise. Actions the dead enforcer had claimed but not sent go
      out once, after its lease.
    """
    engine = store.make_engine(mariadb_url)
    _wipe(engine)
    world = make_world(engine)
    count = 40
    now = datetime.now(timezone.utc)
    processes = []
    with ObservedNas(secret=NAS_SECRET) as nas:
        with engine.begin() as conn:
            store.add_nas(conn, "127.0.0.1", NAS_SECRET, "sim", "mikrotik", nas.port)
            services = {}
            for i in range(count):
                username = f"user{i}"
                services[username] = store.add_service(conn, world["customer_id"], world["plan_id"], username,
                                                       "", now, "capped")
                conn.execute(store.sessions.insert().values(
                    nas="127.0.0.1", acct_session_id=f"s{i}", username=username, service_id=services[username],
                    last_time=now, started_at=now, nas_ip="127.0.0.1"))
        killed = {}
        seen_from_e1 = []

        def kill_e1_mid_batch(pkt):
            if killed:
                return
            username = pkt["User-Name"][0]
            with engine.begin() as conn:
                [action] = store.list_actions(conn, services[username])
            if action["claimed_by"] != "e1":
                return
            seen_from_e1.append(username)
            if len(seen_from_e1) < 2:
                return
            e1 = processes[0][0]
            os.kill(e1.pid, signal.SIGKILL)  # by PID: the process this test started
            e1.wait(10)
            with engine.begin() as conn:
                killed["pending_of_e1"] = {a["service_id"] for a in store.list_actions(conn)
                                           if a["claimed_by"] == "e1" and a["status"] == "pending"}
            killed["at_the_nas"] = services[username]
        nas.on_request = kill_e1_mid_batch
        try:
            for node in ("e1", "e2"):
                processes.append(start_enforcer(mariadb_url, node, tmp_path))
            for process, output in processes:
                wait_for(lambda: any("started" in line for line in output) or process.poll() is not None,
                         timeout=30, what="cap-enforcer to start")
                assert process.poll() is None, "\n".join(output)
            with engine.begin() as conn:  # both run: the outbox fills now
                for service_id in services.values():
                    store.add_action(conn, service_id, "reduce", now, rate="1M/1M")

            def finished():
                with engine.begin() as conn:
                    return all(a["status"] != "pending" for a in store.list_actions(conn))
            wait_for(finished, timeout=60, what="every action finished")
        finally:
            for process, _ in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(20)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(10)
        received = Counter(r["attributes"]["User-Name"][0] for r in nas.requests)
    with engine.begin() as conn:
        actions = store.list_actions(conn)
    engine.dispose()

    assert killed, f"e1 never sent two CoAs (e1 sent {seen_from_e1}): the kill did not happen mid-batch"
    assert [a["status"] for a in actions] == ["done"] * count, [(a["id"], a["status"], a["result"]) for a in actions]
    assert all(a["finished_at"] is not None for a in actions)
    assert set(received) == set(services), "a CoA never reached the NAS"
    twice = {services[u] for u, n in received.items() if n > 1}
    assert max(received.values()) <= 2
    assert killed["at_the_nas"] in twice, "the CoA in flight at the kill must be sent again after the lease"
    assert twice <= killed["pending_of_e1"], "only the killed enforcer's unfinished actions may arrive twice"
    assert len(twice) <= CONCURRENCY
    assert {a["claimed_by"] for a in actions} >= {"e2"}
    # e1 claimed a batch of 10 and had sent at most 1 + CONCURRENCY of it: the rest went out once.
    assert len(killed["pending_of_e1"]) > len(twice), "e1 died with claimed, unsent actions too"
