"""capctl topup / bonus: data an operator adds or removes, and the money it moves."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from freezegun import freeze_time

from tests.cli_helpers import (
    GB, MB, PLAN, SERVICE, buckets, connect, customer, fails, feed, history, make_world, ok, ok_json, snapshot,
)
from rlm_cap import store

NOW = datetime(2026, 11, 10, 10, 0, tzinfo=timezone.utc)
OPERATOR = {"RLM_CAP_ACTOR": "carol"}


@pytest.fixture(scope="module", autouse=True)
def frozen():
    """The CLI reads the real clock: every test of this module runs at NOW (one freeze, it is slow)."""
    with freeze_time(NOW):
        yield


def _bucket_id(output: str) -> int:
    return int(re.search(r"\(bucket (\d+)\)", output).group(1))


def test_topup_by_plan_creates_a_bucket_charges_the_balance_and_writes_history(db_url):
    make_world(db_url)
    out = ok(db_url, "topup", "add", SERVICE, "--plan", "5GB", env=OPERATOR)
    assert re.fullmatch(r"top-up of 5 GB added to 'alice@isp' \(bucket \d+\)\n", out)
    bucket_id = _bucket_id(out)

    bucket = next(b for b in buckets(db_url) if b["id"] == bucket_id)
    with connect(db_url) as conn:
        topup_plan = store.find_topup_plan(conn, store.find_plan(conn, PLAN)["id"], "5GB")
    assert {k: bucket[k] for k in ("kind", "size", "used", "origin", "valid_from", "valid_until",
                                   "topup_plan_id")} == {
        "kind": "topup", "size": 5 * GB, "used": 0, "origin": "admin", "valid_from": NOW, "valid_until": None,
        "topup_plan_id": topup_plan.id}

    money = customer(db_url)
    assert money["balance"] == Decimal("40.00")
    assert [(t["amount"], t["category"], t["description"]) for t in money["transactions"]] == [
        (Decimal("-10.00"), "Top-up", "Top-Up charge 5 GB for Home internet")]
    assert money["invoice_items"] == []

    rows = history(db_url)
    assert [(h["kind"], h["size"], h["amount"], h["bucket_id"], h["actor"], h["detail"]) for h in rows] == [
        ("topup", 5 * GB, "10.00", bucket_id, "carol", "Top-Up charge 5 GB for Home internet")]
    assert ok_json(db_url, "usage", SERVICE)["available_bytes"] == 15 * GB


def test_topup_plan_on_invoice_creates_an_invoice_item_instead_of_a_transaction(db_url):
    make_world(db_url)
    ok(db_url, "topup-plan", "add", PLAN, "Month 1GB", "--size", "1GB", "--price", "3", "--valid-months", "1",
       "--category", "Data", "--add-to-invoice")
    bucket_id = _bucket_id(ok(db_url, "topup", "add", SERVICE, "--plan", "Month 1GB"))
    money = customer(db_url)
    assert money["balance"] == Decimal("50.00") and money["transactions"] == []
    assert [(i["amount"], i["category"], i["description"], i["invoiced_at"]) for i in money["invoice_items"]] == [
        (Decimal("3.00"), "Data", "Top-Up charge 1 GB for Home internet", None)]
    bucket = next(b for b in buckets(db_url) if b["id"] == bucket_id)
    assert bucket["valid_until"] == datetime(2026, 12, 10, tzinfo=timezone.utc)
    assert "invoice item  2026-11-10 10:00      3.00 Top-Up charge 1 GB for Home internet" in ok(
        db_url, "customer", "show", "alice")


def test_custom_topup_size_price_and_validity(db_url):
    make_world(db_url)
    out = ok(db_url, "topup", "add", SERVICE, "--size", "200MB", "--price", "1.5", "--valid-months", "2",
             env=OPERATOR)
    assert out.startswith("top-up of 200 MB added to 'alice@isp'")
    bucket = next(b for b in buckets(db_url) if b["id"] == _bucket_id(out))
    assert (bucket["kind"], bucket["size"], bucket["origin"], bucket["topup_plan_id"], bucket["valid_until"]) == (
        "topup", 200 * MB, "admin", None, datetime(2027, 1, 10, tzinfo=timezone.utc))
    money = customer(db_url)
    assert money["balance"] == Decimal("48.50")
    assert [(t["amount"], t["category"]) for t in money["transactions"]] == [(Decimal("-1.50"), "Top-up")]
    assert [(h["kind"], h["size"], h["amount"], h["actor"]) for h in history(db_url)] == [
        ("topup", 200 * MB, "1.50", "carol")]


def test_custom_topup_as_a_gift_moves_no_money(db_url):
    make_world(db_url)
    ok(db_url, "topup", "add", SERVICE, "--size", "1GB", "--price", "0")
    money = customer(db_url)
    assert money["balance"] == Decimal("50.00") and money["transactions"] == [] and money["invoice_items"] == []
    assert [(h["kind"], h["size"], h["amount"]) for h in history(db_url)] == [("topup", GB, "0.00")]


def test_topup_uses_the_admin_description_template(db_url):
    make_world(db_url)
    ok(db_url, "settings", "set", "admin_topup_description",
       "Extra {{size}} for {{customer.name}} on {{service.username}}")
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert [t["description"] for t in customer(db_url)["transactions"]] == ["Extra 5 GB for alice on alice@isp"]


def test_topup_restores_a_capped_service(db_url):
    make_world(db_url)
    feed(db_url, SERVICE, 10 * GB + 200 * MB)
    assert ok_json(db_url, "service", "show", SERVICE)["cap_state"] == "capped"
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert ok_json(db_url, "service", "show", SERVICE)["cap_state"] == "ok"
    assert [h["kind"] for h in history(db_url)] == ["cap_action", "topup", "restore"]
    with connect(db_url) as conn:
        actions = store.list_actions(conn, store.find_service(conn, SERVICE)["id"])
    assert [(a["kind"], a["rate"]) for a in actions] == [("reduce", "5M/10M"), ("restore", "10M/20M")]
    # The 200 MB used while capped stays recorded over-use; the top-up starts unused.
    usage = ok_json(db_url, "usage", SERVICE)
    assert usage["overuse_bytes"] == 200 * MB and usage["available_bytes"] == 5 * GB


def test_topup_remove_all_unused_data(db_url):
    make_world(db_url)
    bucket_id = _bucket_id(ok(db_url, "topup", "add", SERVICE, "--plan", "5GB",
                              env={"RLM_CAP_ACTOR": "operator"}))
    feed(db_url, SERVICE, 11 * GB)  # 1 GB of the top-up used
    out = ok(db_url, "topup", "remove", SERVICE, bucket_id, env=OPERATOR)
    assert out.strip() == f"4 GB removed from bucket {bucket_id} of 'alice@isp'"
    bucket = next(b for b in buckets(db_url) if b["id"] == bucket_id)
    assert (bucket["size"], bucket["used"]) == (GB, GB)
    rows = history(db_url)
    assert [(h["kind"], h["size"], h["bucket_id"], h["actor"]) for h in rows] == [
        ("topup", 5 * GB, bucket_id, "operator"), ("removal", -4 * GB, bucket_id, "carol"),
        ("cap_action", None, None, "system")]
    # Nothing left anywhere: the service is capped now.
    assert ok_json(db_url, "service", "show", SERVICE)["cap_state"] == "capped"
    # Money is not refunded by a removal.
    assert customer(db_url)["balance"] == Decimal("40.00")


def test_topup_remove_part(db_url):
    make_world(db_url)
    bucket_id = _bucket_id(ok(db_url, "topup", "add", SERVICE, "--plan", "5GB"))
    assert ok(db_url, "topup", "remove", SERVICE, bucket_id, "--size", "1.5GB").startswith("1.5 GB removed")
    assert next(b for b in buckets(db_url) if b["id"] == bucket_id)["size"] == 3500 * MB
    assert ok_json(db_url, "usage", SERVICE)["available_bytes"] == 13500 * MB
    assert [(h["kind"], h["size"]) for h in history(db_url)] == [("topup", 5 * GB), ("removal", -1500 * MB)]
    before = snapshot(db_url)
    assert "has 3.5 GB unused; cannot remove 4 GB" in fails(db_url, "topup", "remove", SERVICE, bucket_id,
                                                            "--size", "4GB")
    assert snapshot(db_url) == before


def test_bonus_add(db_url):
    make_world(db_url, plan_args=("--bonus", "1GB", "--time-frame", "00:00-04:00"))
    out = ok(db_url, "bonus", "add", SERVICE, "--size", "2GB", "--valid-months", "1", env=OPERATOR)
    assert re.fullmatch(r"bonus of 2 GB added to 'alice@isp' \(bucket \d+\)\n", out)
    bonus = next(b for b in buckets(db_url) if b["id"] == _bucket_id(out))
    assert (bonus["kind"], bonus["size"], bonus["origin"], bonus["valid_until"]) == (
        "bonus", 2 * GB, "admin", datetime(2026, 12, 10, tzinfo=timezone.utc))
    assert [(h["kind"], h["size"], h["actor"], h["detail"]) for h in history(db_url)] == [
        ("bonus", 2 * GB, "carol", "bonus 2 GB valid until 2026-12-10")]
    assert customer(db_url)["transactions"] == []
    # Bonus is not normal data; it shows as its own bucket in usage.
    usage = ok_json(db_url, "usage", SERVICE)
    assert usage["available_bytes"] == 10 * GB
    assert sorted(b["size"] for b in usage["buckets"] if b["kind"] == "bonus") == [GB, 2 * GB]
    assert "(time frames only)" in ok(db_url, "usage", SERVICE)


def test_bonus_add_is_refused_without_time_frames(db_url):
    make_world(db_url)
    before = snapshot(db_url)
    message = fails(db_url, "bonus", "add", SERVICE, "--size", "2GB")
    assert "has no time frames" in message and "--time-frame" in message
    assert snapshot(db_url) == before


def test_monthly_topup_limit(db_url):
    make_world(db_url, customer_args=("--max-topups", "1"))
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    before = snapshot(db_url)
    message = fails(db_url, "topup", "add", SERVICE, "--size", "1GB", "--price", "0")
    assert message == "Error: top-up refused: the limit of 1 top-ups per month is reached (1 this month)"
    assert snapshot(db_url) == before
    assert [b["kind"] for b in buckets(db_url)].count("topup") == 1


def test_monthly_topup_limit_of_auto_topups_leaves_operator_topups_alone(db_url):
    make_world(db_url, customer_args=("--max-topups", "1", "--limitation-type", "auto"))
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert [b["kind"] for b in buckets(db_url)].count("topup") == 2


def test_monthly_topup_limit_counts_per_period(db_url):
    make_world(db_url, customer_args=("--max-topups", "1"))
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    with freeze_time("2026-12-01 00:00:01"):
        ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert [b["kind"] for b in buckets(db_url)].count("topup") == 2


def test_check_balance_refuses_a_topup_the_balance_cannot_pay(db_url):
    make_world(db_url)
    ok(db_url, "topup-plan", "add", PLAN, "60GB", "--size", "60GB", "--price", "60")
    ok(db_url, "topup-plan", "add", PLAN, "on invoice", "--size", "60GB", "--price", "60", "--add-to-invoice")
    ok(db_url, "topup", "add", SERVICE, "--plan", "60GB")  # check_balance is off: the balance goes negative
    assert customer(db_url)["balance"] == Decimal("-10.00")

    ok(db_url, "settings", "set", "check_balance", "yes")
    before = snapshot(db_url)
    assert fails(db_url, "topup", "add", SERVICE, "--plan", "5GB") == \
        "Error: top-up refused: balance -10.00 is below the price 10.00"
    assert snapshot(db_url) == before
    ok(db_url, "balance", "add", "alice", "20")
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert customer(db_url)["balance"] == Decimal("0.00")
    # A top-up billed on the invoice needs no balance.
    ok(db_url, "topup", "add", SERVICE, "--plan", "on invoice")
    assert [i["amount"] for i in customer(db_url)["invoice_items"]] == [Decimal("60.00")]


def test_payment_after_a_refused_auto_topup_does_not_bill_the_capped_traffic(db_url):
    ok(db_url, "plan", "add", "Auto", "--limit", "10GB", "--action", "fixed", "--fixed-rate", "1M/1M")
    ok(db_url, "topup-plan", "add", "Auto", "1GB", "--size", "1GB", "--price", "5")
    ok(db_url, "plan", "edit", "Auto", "--auto-topup-plan", "1GB", "--trigger", "10")
    ok(db_url, "settings", "set", "check_balance", "yes")
    ok(db_url, "customer", "add", "bob", "--balance", "0", "--auto-topup")
    ok(db_url, "service", "add", "bob@isp", "--customer", "bob", "--plan", "Auto")
    feed(db_url, "bob@isp", 10 * GB)
    assert ok_json(db_url, "service", "show", "bob@isp")["cap_state"] == "capped"  # refused: balance 0
    feed(db_url, "bob@isp", 3 * GB)  # at 1M/1M, while capped
    ok(db_url, "balance", "add", "bob", "20")
    # The next update restores full speed into the trigger grace (10 % of 1 GB),
    # as at the first exhaustion; nothing is charged yet.
    feed(db_url, "bob@isp", MB)
    assert ok_json(db_url, "service", "show", "bob@isp")["cap_state"] == "ok"
    assert [h for h in history(db_url, "bob@isp") if h["kind"] == "auto_topup"] == []
    # Past the trigger: one auto top-up, holding only what was used since the
    # restore (the 1 MB update that restored the service was used while capped).
    feed(db_url, "bob@isp", 100 * MB)
    auto = [h for h in history(db_url, "bob@isp") if h["kind"] == "auto_topup"]
    assert len(auto) == 1
    assert customer(db_url, "bob")["balance"] == Decimal("15.00")
    assert [b["used"] for b in buckets(db_url, "bob@isp") if b["kind"] == "topup"] == [100 * MB]
