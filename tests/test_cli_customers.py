"""capctl customer / balance / service: who pays, their services, and plan changes."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from freezegun import freeze_time

from tests.cli_helpers import (
    CUSTOMER, GB, MB, PLAN, SERVICE, buckets, connect, customer, fails, feed, history, make_world, ok,
    ok_json,
)
from rlm_cap import store

NOW = datetime(2026, 11, 10, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def frozen():
    """The CLI reads the real clock: every test of this module runs at NOW (one freeze, it is slow)."""
    with freeze_time(NOW):
        yield


def test_customer_add_with_every_option(db_url):
    out = ok(db_url, "customer", "add", "alice", "--email", "alice@example.net", "--phone", "+4912345",
             "--partner", "north", "--balance", "50", "--auto-topup", "--max-topups", "3",
             "--limitation-type", "manual", "--billing-day", "5", "--timezone", "Europe/Berlin")
    assert re.fullmatch(r"customer 'alice' added \(id \d+\)\n", out)
    shown = ok_json(db_url, "customer", "show", "alice")
    assert {k: shown[k] for k in ("name", "email", "phone", "partner", "balance", "auto_topup", "billing_day",
                                  "settings", "services", "transactions", "invoice_items")} == {
        "name": "alice", "email": "alice@example.net", "phone": "+4912345", "partner": "north",
        "balance": "50.00", "auto_topup": True, "billing_day": 5,
        "settings": {"max_topups_per_month": "3", "limitation_type": "manual", "timezone": "Europe/Berlin"},
        "services": [], "transactions": [], "invoice_items": []}
    assert shown["created_at"] == NOW.isoformat()

    text = ok(db_url, "customer", "show", "alice")
    for line in ("balance       50.00", "partner       north", "auto top-up   on", "billing day   5",
                 "timezone      Europe/Berlin"):
        assert line in text
    assert re.search(r"max_topups_per_month\s+3", text) and re.search(r"limitation_type\s+manual", text)

    # The customer settings are what the service resolves to.
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB")
    ok(db_url, "service", "add", SERVICE, "--customer", "alice", "--plan", PLAN)
    effective = ok_json(db_url, "settings", "get", "--service", SERVICE)
    assert effective["max_topups_per_month"] == {"value": 3, "from": "customer"}
    assert effective["timezone"] == {"value": "Europe/Berlin", "from": "customer"}
    # Billing day 5 in Berlin: the period runs from the 5th, local midnight.
    usage = ok_json(db_url, "usage", SERVICE)
    assert (usage["period_start"], usage["period_end"]) == (
        "2026-11-04T23:00:00+00:00", "2026-12-04T23:00:00+00:00")


def test_customer_add_defaults(db_url):
    ok(db_url, "customer", "add", "bob")
    shown = ok_json(db_url, "customer", "show", "bob")
    assert (shown["balance"], shown["partner"], shown["auto_topup"], shown["billing_day"], shown["settings"],
            shown["email"]) == ("0.00", None, False, None, {}, None)
    text = ok(db_url, "customer", "show", "bob")
    for line in ("balance       0.00", "partner       -", "auto top-up   off", "billing day   calendar month"):
        assert line in text


def test_customers_share_a_partner(db_url):
    ok(db_url, "customer", "add", "alice", "--partner", "north")
    ok(db_url, "customer", "add", "bob", "--partner", "north")
    ok(db_url, "customer", "add", "carol", "--partner", "south")
    with connect(db_url) as conn:
        rows = [store.find_customer(conn, n) for n in ("alice", "bob", "carol")]
        north = store.find_partner(conn, "north")
    assert rows[0]["partner_id"] == rows[1]["partner_id"] == north
    assert rows[2]["partner_id"] not in (None, north)


def test_balance_add_records_a_payment(db_url):
    ok(db_url, "customer", "add", "alice", "--balance", "50")
    out = ok(db_url, "balance", "add", "alice", "20.5", env={"RLM_CAP_ACTOR": "carol"})
    assert out.strip() == "payment of 20.50 recorded; balance of 'alice' is 70.50"
    ok(db_url, "balance", "add", "alice", "4.5", "--description", "Cash at the shop", env={"RLM_CAP_ACTOR": "dave"})
    row = customer(db_url)
    assert row["balance"] == Decimal("75.00")
    assert [(t["amount"], t["category"], t["description"], t["at"]) for t in row["transactions"]] == [
        (Decimal("20.50"), "Payment", "Payment (carol)", NOW),
        (Decimal("4.50"), "Payment", "Cash at the shop (dave)", NOW)]
    text = ok(db_url, "customer", "show", "alice")
    assert "balance       75.00" in text
    assert "transaction   2026-11-10 10:00     20.50 Payment (carol)" in text


def test_service_add_and_show(db_url):
    make_world(db_url)
    shown = ok_json(db_url, "service", "show", SERVICE)
    assert {k: shown[k] for k in ("username", "customer", "plan", "description", "cap_state",
                                  "open_sessions")} == {
        "username": SERVICE, "customer": CUSTOMER, "plan": PLAN, "description": "Home internet",
        "cap_state": "ok", "open_sessions": []}
    assert shown["state_changed_at"] == NOW.isoformat()
    text = ok(db_url, "service", "show", SERVICE)
    assert text.splitlines()[0].startswith(f"service {SERVICE} (id ")
    for line in (f"customer     {CUSTOMER}", f"plan         {PLAN}", "description  Home internet",
                 "CAP state    ok since 2026-11-10 10:00"):
        assert line in text
    assert f"service       {SERVICE} (Home internet), ok" in ok(db_url, "customer", "show", CUSTOMER)

    feed(db_url, SERVICE, 100 * MB)
    sessions = ok_json(db_url, "service", "show", SERVICE)["open_sessions"]
    assert len(sessions) == 1 and sessions[0]["nas"] == "nas1" and sessions[0]["output_total"] == 100 * MB
    assert re.search(r"session      sess-\d+ on nas1 since 2026-11-10 10:00", ok(db_url, "service", "show", SERVICE))


def test_service_add_finds_customer_and_plan_by_id(db_url):
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB")
    ok(db_url, "customer", "add", "alice")
    with connect(db_url) as conn:
        plan_id, customer_id = store.find_plan(conn, PLAN)["id"], store.find_customer(conn, "alice")["id"]
    ok(db_url, "service", "add", SERVICE, "--customer", customer_id, "--plan", plan_id)
    shown = ok_json(db_url, "service", "show", SERVICE)
    assert (shown["customer"], shown["plan"], shown["description"]) == ("alice", PLAN, "")


def test_numeric_customer_and_service_names_are_not_taken_for_ids(db_url):
    """Regression: `customer add 7` / `service add 7` were refused when id 7 existed (RADIUS
    User-Names are often account numbers)."""
    make_world(db_url)
    with connect(db_url) as conn:
        customer_id = store.find_customer(conn, CUSTOMER)["id"]
        service_id = store.find_service(conn, SERVICE)["id"]
    ok(db_url, "customer", "add", str(customer_id), "--balance", "7")
    assert ok_json(db_url, "customer", "show", str(customer_id))["balance"] == "7.00"
    ok(db_url, "service", "add", str(service_id), "--customer", str(customer_id), "--plan", PLAN)
    numeric = ok_json(db_url, "service", "show", str(service_id))
    assert numeric["username"] == str(service_id) and numeric["customer"] == str(customer_id)
    assert "exists already" in fails(db_url, "service", "add", str(service_id), "--customer", CUSTOMER,
                                     "--plan", PLAN)


def _used_topup(db_url) -> dict:
    """alice@isp: 5 GB top-up bought, 10.5 GB used (500 MB of the top-up)."""
    make_world(db_url)
    ok(db_url, "plan", "add", "Big 50GB", "--limit", "50GB")
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    feed(db_url, SERVICE, 10 * GB + 500 * MB)
    topup = next(b for b in buckets(db_url) if b["kind"] == "topup")
    assert (topup["size"], topup["used"]) == (5 * GB, 500 * MB)
    return topup


@pytest.mark.parametrize("scope", [(), ("--customer", CUSTOMER), ("--service", SERVICE)])
def test_change_plan_with_transfer_usage_keeps_unused_topup_data(db_url, scope):
    topup = _used_topup(db_url)
    ok(db_url, "settings", "set", "transfer_usage", "yes", *scope)
    out = ok(db_url, "service", "change-plan", SERVICE, "Big 50GB", env={"RLM_CAP_ACTOR": "dave"})
    assert out.strip() == f"service '{SERVICE}' moved to plan 'Big 50GB'"

    assert ok_json(db_url, "service", "show", SERVICE)["plan"] == "Big 50GB"
    kept = next(b for b in buckets(db_url) if b["id"] == topup["id"])
    assert (kept["size"], kept["used"]) == (5 * GB, 500 * MB)
    rows = [(h["kind"], h["size"], h["bucket_id"], h["actor"]) for h in history(db_url)]
    assert ("transfer", 4500 * MB, topup["id"], "dave") in rows
    assert not any(kind == "removal" for kind, *_ in rows)
    assert rows[-1][0] == "plan_change"
    assert history(db_url)[-1]["detail"] == f"plan {PLAN} -> Big 50GB"
    usage = ok_json(db_url, "usage", SERVICE)
    assert usage["plan"] == "Big 50GB"
    monthly = next(b for b in usage["buckets"] if b["kind"] == "monthly")
    assert monthly["size"] == 50 * GB and monthly["used"] == 10 * GB
    assert usage["available_bytes"] == 40 * GB + 4500 * MB
    assert usage["state"] == "ok"


def test_change_plan_without_transfer_usage_removes_unused_topup_data(db_url):
    topup = _used_topup(db_url)
    ok(db_url, "service", "change-plan", SERVICE, "Big 50GB", env={"RLM_CAP_ACTOR": "dave"})
    dropped = next(b for b in buckets(db_url) if b["id"] == topup["id"])
    assert (dropped["size"], dropped["used"]) == (500 * MB, 500 * MB)
    removal = [h for h in history(db_url) if h["kind"] == "removal"]
    assert [(h["size"], h["bucket_id"], h["actor"]) for h in removal] == [(-4500 * MB, topup["id"], "dave")]
    assert not any(h["kind"] == "transfer" for h in history(db_url))
    assert ok_json(db_url, "usage", SERVICE)["available_bytes"] == 40 * GB


def test_change_plan_to_a_smaller_plan_caps_the_service(db_url):
    make_world(db_url)
    ok(db_url, "plan", "add", "Small 1GB", "--limit", "1GB", "--action", "fixed", "--fixed-rate", "1M/1M")
    feed(db_url, SERVICE, 2 * GB)
    assert ok_json(db_url, "service", "show", SERVICE)["cap_state"] == "ok"
    ok(db_url, "service", "change-plan", SERVICE, "Small 1GB")
    assert ok_json(db_url, "service", "show", SERVICE)["cap_state"] == "capped"
    with connect(db_url) as conn:
        actions = store.list_actions(conn, store.find_service(conn, SERVICE)["id"])
    assert [(a["kind"], a["rate"]) for a in actions] == [("fixed", "1M/1M")]


def test_change_from_unlimited_plan_does_not_charge_auto_topups_for_old_traffic(db_url):
    ok(db_url, "plan", "add", "Flat", "--unlimited")
    ok(db_url, "plan", "add", "Capped", "--limit", "10GB")
    ok(db_url, "topup-plan", "add", "Capped", "1GB", "--size", "1GB", "--price", "5")
    ok(db_url, "plan", "edit", "Capped", "--auto-topup-plan", "1GB")
    ok(db_url, "customer", "add", "bob", "--balance", "100", "--auto-topup")
    ok(db_url, "service", "add", "bob@isp", "--customer", "bob", "--plan", "Flat")
    feed(db_url, "bob@isp", 3 * GB)  # while unlimited
    ok(db_url, "service", "change-plan", "bob@isp", "Capped")
    feed(db_url, "bob@isp", 10 * GB)  # exactly the new plan's limit: one auto top-up, unused
    assert [b["used"] for b in buckets(db_url, "bob@isp") if b["kind"] == "topup"] == [0]
    assert customer(db_url, "bob")["balance"] == Decimal("95.00")
