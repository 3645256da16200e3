"""The whole chain on loopback: NAS -> FreeRADIUS + rlm_cap -> outbox -> cap-enforcer -> CoA at the NAS."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from cli.lab import Nas, NasSimulator, wait_for
from rlm_cap import ledger, store

from .conftest import GB
from .test_e2e_radius import USER
from .test_enforcer import SECRET, enforcer


def capped(engine) -> bool:
    with engine.begin() as conn:
        return store.find_service(conn, USER)["cap_state"] == "capped"


@pytest.fixture
def mikrotik(engine, world):
    """A RouterOS-like NAS on 127.0.0.1 in the nas table, and a plan without night frames."""
    with NasSimulator(secret=SECRET) as simulator:
        with engine.begin() as conn:
            store.add_nas(conn, "127.0.0.1", SECRET, "mikrotik1", "mikrotik", simulator.port)
            store.set_time_frames(conn, world["plan_id"], [])
        yield simulator


def test_crossing_the_cap_sends_coa_and_a_topup_restores(radius, engine, world, mikrotik):
    nas = Nas(radius(), address="127.0.0.1")
    assert nas.accounting("Start", "s1", USER, Framed_IP_Address="10.0.0.7")
    assert nas.accounting("Interim-Update", "s1", USER, down=11 * GB, up=0, session_time=300)
    wait_for(lambda: capped(engine), what="the service to be capped")
    run = enforcer(engine, clock=lambda: datetime.now(timezone.utc))
    run.send_actions()
    [coa] = mikrotik.requests
    assert coa["attributes"]["Mikrotik-Rate-Limit"] == ["5M/10M"]
    assert coa["attributes"]["Framed-IP-Address"] == ["10.0.0.7"]
    assert coa["message_authenticator_valid"]
    with engine.begin() as conn:  # the operator: capctl topup add alice@isp --plan 5GB
        ctx = ledger.load_context(conn, store.find_service(conn, USER))
        ledger.apply_topup(conn, ctx, "admin", "maria", datetime.now(timezone.utc),
                           store.find_topup_plan(conn, world["plan_id"], "5GB"))
    run.send_actions()
    assert [r["attributes"]["Mikrotik-Rate-Limit"] for r in mikrotik.requests] == [["5M/10M"], ["10M/20M"]]


def test_block_disconnects_and_login_is_rejected(radius, engine, world, mikrotik):
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], action="block")
    nas = Nas(radius(), address="127.0.0.1")
    assert nas.accounting("Start", "s1", USER)
    assert nas.accounting("Interim-Update", "s1", USER, down=11 * GB, up=0, session_time=300)
    wait_for(lambda: capped(engine), what="the service to be capped")
    enforcer(engine, clock=lambda: datetime.now(timezone.utc)).send_actions()
    assert [r["code"] for r in mikrotik.requests] == [40]  # Disconnect-Request
    wait_for(lambda: nas.login(USER).code == 3, timeout=10, what="an Access-Reject at the next login")


def test_auto_topup_with_balance_check_instead_of_the_cap(radius, engine, world, mikrotik):
    with engine.begin() as conn:
        topup = store.find_topup_plan(conn, world["plan_id"], "5GB")
        store.update_plan(conn, world["plan_id"], auto_topup_plan_id=topup.id)
        store.update_customer(conn, world["customer_id"], auto_topup=True, balance=Decimal("12"))
        store.set_setting(conn, "global", 0, "check_balance", "yes")
    nas = Nas(radius(), address="127.0.0.1")
    assert nas.accounting("Start", "s1", USER)
    assert nas.accounting("Interim-Update", "s1", USER, down=11 * GB, up=0, session_time=300)

    def topped_up():
        with engine.begin() as conn:
            return [b for b in store.bucket_rows(conn, world["service_id"]) if b["origin"] == "auto"]
    [auto] = wait_for(topped_up, what="the auto top-up")
    assert auto["used"] == GB  # the over-use past the CAP went into it
    # The balance pays one more 10.00 top-up? No: 2.00 is left, so the next exhaustion caps.
    assert nas.accounting("Interim-Update", "s1", USER, down=16 * GB, up=0, session_time=600)
    wait_for(lambda: capped(engine), what="the cap once the balance cannot pay")
    enforcer(engine, clock=lambda: datetime.now(timezone.utc)).send_actions()
    assert [r["attributes"]["Mikrotik-Rate-Limit"] for r in mikrotik.requests] == [["5M/10M"]]
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("2.00")
        [cap] = [h for h in store.list_history(conn, world["service_id"]) if h["kind"] == "cap_action"]
    assert "balance 2.00 is below the price 10.00" in cap["detail"]
