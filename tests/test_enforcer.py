"""cap-enforcer against real parts: the outbox on SQLite and MariaDB, a RouterOS-like NAS, a real SMTP server."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest

from enforcer import coa
from enforcer.config import EnforcerConfig
from enforcer.jobs import Enforcer
from enforcer.notify import SmsGateway, Smtp
from rlm_cap import counters, ledger, store

from .conftest import GB, NOW
from cli.lab import NasSimulator
from .test_ledger import actions, apply, history, record, session_stream

SECRET = "nas-s3cret"


class Clock:
    def __init__(self, now=NOW + timedelta(minutes=30)):
        self.now = now

    def __call__(self):
        return self.now


def enforcer(engine, clock=None, node="e1", **overrides) -> Enforcer:
    settings = dict(node=node, coa_timeout=0.3, coa_attempts=1, max_attempts=3, lease=60, concurrency=4)
    settings.update(overrides)
    return Enforcer(engine, EnforcerConfig(**settings),
                    coa.Client(timeout=settings["coa_timeout"], retries=settings["coa_attempts"], backoff=0),
                    clock or Clock())


@pytest.fixture
def nas_sim():
    with NasSimulator(secret=SECRET) as simulator:
        yield simulator


def register(engine, simulator, address="127.0.0.1"):
    with engine.begin() as conn:
        store.add_nas(conn, address, SECRET, "sim", "mikrotik", simulator.port)


def cap_alice(engine, world):
    """alice@isp's session on NAS 127.0.0.1 goes over the CAP: one CAP action in the outbox."""
    with engine.begin() as conn:
        store.set_time_frames(conn, world["plan_id"], [])
    apply(engine, *session_stream(NOW, [(11 * GB, 0)], nas="127.0.0.1"))


def outbox(engine, world, kind=None):
    return [a for a in actions(engine, world["service_id"]) if kind is None or a["kind"] == kind]


def test_cap_sends_coa_with_the_reduced_rate_and_records_the_ack(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)
    assert enforcer(engine).send_actions() == 1
    [request] = nas_sim.requests
    attrs = request["attributes"]
    assert attrs["Mikrotik-Rate-Limit"] == ["5M/10M"]
    assert attrs["User-Name"] == ["alice@isp"] and attrs["Acct-Session-Id"] == ["s1"]
    assert request["message_authenticator"] and request["message_authenticator_valid"]
    [action] = outbox(engine, world, "reduce")
    assert action["status"] == "done" and "CoA-ACK" in action["result"]
    assert [h["kind"] for h in history(engine, world["service_id"])][-1] == "coa"
    assert enforcer(engine).send_actions() == 0  # nothing is sent twice


def test_block_sends_disconnect(engine, world, nas_sim):
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], action="block")
    register(engine, nas_sim)
    cap_alice(engine, world)
    enforcer(engine).send_actions()
    [request] = nas_sim.requests
    assert request["code"] == 40  # Disconnect-Request
    assert outbox(engine, world, "block")[0]["status"] == "done"


def test_topup_restores_the_normal_rate(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)
    run = enforcer(engine)
    run.send_actions()
    with engine.begin() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, "alice@isp"))
        ledger.apply_topup(conn, ctx, "admin", "op", NOW + timedelta(minutes=10),
                           store.find_topup_plan(conn, world["plan_id"], "5GB"))
    run.send_actions()
    assert [r["attributes"]["Mikrotik-Rate-Limit"] for r in nas_sim.requests] == [["5M/10M"], ["10M/20M"]]


def test_nak_session_not_found_closes_the_stale_session(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)
    nas_sim.behaviour = "nak"
    enforcer(engine).send_actions()
    [action] = outbox(engine, world, "reduce")
    assert action["status"] == "done" and "Session-Context-Not-Found" in action["result"]
    with engine.begin() as conn:
        assert store.open_sessions(conn, world["service_id"]) == []


def test_silent_nas_is_retried_with_backoff_then_given_up(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)
    nas_sim.behaviour = "silent"
    clock = Clock()
    run = enforcer(engine, clock, max_attempts=2)
    run.send_actions()
    [action] = outbox(engine, world, "reduce")
    assert action["status"] == "pending" and action["due_at"] > clock.now and action["attempts"] == 1
    assert run.send_actions() == 0  # not due yet
    clock.now = action["due_at"] + timedelta(seconds=1)
    run.send_actions()
    [action] = outbox(engine, world, "reduce")
    assert action["status"] == "failed" and "gave up after 2 attempts" in action["result"]
    assert len(nas_sim.requests) == 2


def test_an_older_cap_action_is_superseded_by_a_newer_one(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)
    with engine.begin() as conn:  # a top-up before the enforcer ran: reduce then restore are pending
        ctx = ledger.load_context(conn, store.find_service(conn, "alice@isp"))
        ledger.apply_topup(conn, ctx, "admin", "op", NOW + timedelta(minutes=10),
                           store.find_topup_plan(conn, world["plan_id"], "5GB"))
    enforcer(engine).send_actions()
    assert [r["attributes"]["Mikrotik-Rate-Limit"] for r in nas_sim.requests] == [["10M/20M"]]
    assert [a["status"] for a in outbox(engine, world) if a["kind"] in ("reduce", "restore")] == ["superseded", "done"]


def test_unknown_nas_fails_with_a_hint(engine, world):
    cap_alice(engine, world)
    enforcer(engine).send_actions()
    [action] = outbox(engine, world, "reduce")
    assert action["status"] == "failed" and "capctl nas add" in action["result"]


def test_an_enforcer_killed_after_claiming_loses_nothing(engine, world, nas_sim):
    """A claim whose enforcer died is sent by another once the lease runs out."""
    register(engine, nas_sim)
    cap_alice(engine, world)
    clock = Clock()
    store.run_in_transaction(engine, lambda conn: store.claim_actions(
        conn, "dead", clock.now, clock.now + timedelta(seconds=60), 10, False))  # then it dies
    survivor = enforcer(engine, clock, node="e2")
    assert survivor.send_actions() == 0  # leased to the dead one
    clock.now += timedelta(seconds=61)
    assert survivor.send_actions() == 1
    assert len(nas_sim.requests) == 1 and outbox(engine, world, "reduce")[0]["status"] == "done"


def test_two_enforcers_racing_send_each_action_exactly_once(engine, world, nas_sim):
    register(engine, nas_sim)
    count = 200
    with engine.begin() as conn:
        for i in range(count):
            username = f"user{i}"
            service_id = store.add_service(conn, world["customer_id"], world["plan_id"], username, "", NOW, "capped")
            conn.execute(store.sessions.insert().values(
                nas="127.0.0.1", acct_session_id=f"s{i}", username=username, service_id=service_id,
                last_time=NOW, started_at=NOW, nas_ip="127.0.0.1"))
            store.add_action(conn, service_id, "reduce", NOW, rate="1M/1M")
    racers = [enforcer(engine, node=f"e{n}", batch_size=20, concurrency=4) for n in (1, 2)]
    barrier = threading.Barrier(2)

    def drain(run):
        barrier.wait()
        while run.send_actions():
            pass
    threads = [threading.Thread(target=drain, args=(r,)) for r in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sessions = [r["attributes"]["Acct-Session-Id"][0] for r in nas_sim.requests]
    assert len(sessions) == count and len(set(sessions)) == count
    with engine.begin() as conn:
        rows = store.list_actions(conn)
    assert {r["status"] for r in rows} == {"done"}
    assert {r["claimed_by"] for r in rows} == {"e1", "e2"}  # both took part


def test_80_percent_email_arrives_once(engine, world, smtp_server):
    port, inbox = smtp_server()
    apply(engine, *session_stream(NOW, [(8 * GB + 1, 0)]))
    smtp = Smtp(host="127.0.0.1", port=port, sender="noc@isp.example")
    runs = [enforcer(engine, node=n, smtp=smtp) for n in ("e1", "e2")]
    for run in runs * 2:
        run.send_notifications()
    apply(engine, record(counters.INTERIM, NOW + timedelta(minutes=10), 9 * GB, 0, 600))
    for run in runs:
        run.send_notifications()
    assert len(inbox.envelopes) == 1
    assert inbox.envelopes[0].rcpt_tos == ["alice@example.net"]
    assert "alice, you used 80% of Home internet" in inbox.body()
    assert [h["kind"] for h in history(engine, world["service_id"])] == ["notification"]


def test_a_failed_email_is_retried_and_enforcement_goes_on(engine, world, nas_sim):
    register(engine, nas_sim)
    cap_alice(engine, world)  # an 80 % notification and a CAP action
    dead_smtp = Smtp(host="127.0.0.1", port=1, timeout=0.5)
    run = enforcer(engine, smtp=dead_smtp)
    run.send_notifications()
    run.send_actions()
    assert outbox(engine, world, "reduce")[0]["status"] == "done"
    [notify] = outbox(engine, world, "notify")
    assert notify["status"] == "pending" and "email" in notify["result"]


def test_period_close_and_housekeeping(engine, world):
    sid = world["service_id"]
    apply(engine, *session_stream(NOW, [(4 * GB, 0)]))
    with engine.begin() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, sid))
        ledger.apply_topup(conn, ctx, "admin", "op", NOW, size=GB, price=Decimal("0"), valid_months=1)
    clock = Clock(NOW.replace(month=12, day=5))
    run = enforcer(engine, clock, stale_after=3600)
    assert run.close_periods() == 1
    assert run.close_periods() == 0
    expired, stale = run.housekeeping()
    assert (expired, stale) == (1, 1)
    assert run.housekeeping() == (0, 0)
    kinds = [h["kind"] for h in history(engine, sid)]
    assert kinds.count("rollover") == 1 and kinds.count("expiry") == 1
    [expiry] = [h for h in history(engine, sid) if h["kind"] == "expiry"]
    assert expiry["size"] == -GB


def test_sms_notification_goes_through_the_gateway(engine, world, gateway):
    with engine.begin() as conn:
        store.add_notification_rule(conn, world["plan_id"], "monthly", 50, "sms", "", "{{ usage.percent }}% used")
        store.update_customer(conn, world["customer_id"], phone="+49 170 1234567")
    sms = SmsGateway(url=gateway.base + "/send?to={{ phone|urlencode }}&text={{ text|urlencode }}", method="GET")
    apply(engine, *session_stream(NOW, [(6 * GB, 0)]))
    enforcer(engine, sms=sms).send_notifications()
    [sent] = gateway.requests
    assert sent["query"] == {"to": ["+49 170 1234567"], "text": ["60% used"]}


def test_cap_enforcer_daemon_runs_and_stops_on_sigterm(db_url, world, tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path
    binary = str(Path(sys.executable).parent / "cap-enforcer")
    config = tmp_path / "rlm_cap.conf"
    config.write_text("[enforcer]\nnode = daemon-test\ncoa_interval = 0.2\nperiod_interval = 0.2\n")
    process = subprocess.Popen([binary, "--db", db_url, "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**__import__("os").environ, "RLM_CAP_CONFIG": str(config)},
                               start_new_session=True)
    try:
        import time
        time.sleep(2)
        assert process.poll() is None, process.stdout.read()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "node=daemon-test started" in output and "signal=SIGTERM stopping" in output
    assert "Traceback" not in output
