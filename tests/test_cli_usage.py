"""capctl usage / history / simulate / settings: what operators read back."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from freezegun import freeze_time

from tests.cli_helpers import (
    CUSTOMER, GB, MB, PLAN, SERVICE, fails, feed, make_world, ok, ok_json, snapshot,
)

NOW = datetime(2026, 11, 10, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def frozen():
    """The CLI reads the real clock: every test of this module runs at NOW (one freeze, it is slow)."""
    with freeze_time(NOW):
        yield


# --------------------------------------------------------------------------- usage

def test_usage_json_numbers_are_exact(db_url):
    make_world(db_url)
    feed(db_url, SERVICE, download=2_500_000_123, upload=500_000_001)
    usage = ok_json(db_url, "usage", SERVICE)
    counted = 2_500_000_123 + 500_000_001
    assert {k: v for k, v in usage.items() if k != "buckets"} == {
        "service": SERVICE, "plan": PLAN, "state": "ok",
        "period_start": "2026-11-01T00:00:00+00:00", "period_end": "2026-12-01T00:00:00+00:00",
        "upload_bytes": 500_000_001, "download_bytes": 2_500_000_123, "counted_bytes": counted,
        "bonus_bytes": 0, "free_bytes": 0, "overuse_bytes": 0, "available_bytes": 10 * GB - counted}
    assert [{k: b[k] for k in ("kind", "size", "used", "remaining", "valid_from", "valid_until", "origin")}
            for b in usage["buckets"]] == [
        {"kind": "monthly", "size": 10 * GB, "used": counted, "remaining": 10 * GB - counted,
         "valid_from": "2026-11-01T00:00:00+00:00", "valid_until": "2026-12-01T00:00:00+00:00",
         "origin": "plan"}]


def test_usage_text_shows_traffic_bars_and_sizes(db_url):
    make_world(db_url)
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    feed(db_url, SERVICE, download=2500 * MB, upload=500 * MB)
    lines = ok(db_url, "usage", SERVICE).splitlines()
    assert lines[0] == f"{SERVICE}  plan {PLAN}  period 2026-11-01 - 2026-12-01  state ok"
    assert lines[1] == "  traffic: down 2.5 GB, up 500 MB, counted 3 GB (up+down)"
    monthly, topup = lines[2], lines[3]
    assert monthly.split()[0] == "monthly" and "[######--------------]" in monthly
    assert "3 GB of 10 GB" in monthly and "7 GB left  until 2026-12-01" in monthly
    assert topup.split()[0] == "topup" and "[--------------------]" in topup
    assert "0 B of 5 GB" in topup and "5 GB left  no expiry" in topup
    assert lines[4] == "  available 12 GB"
    assert len(lines) == 5


def test_usage_over_the_cap_counts_only_the_plan_direction(db_url):
    make_world(db_url, plan_args=("--direction", "down"))
    feed(db_url, SERVICE, download=10 * GB + 300 * MB, upload=GB)
    usage = ok_json(db_url, "usage", SERVICE)
    assert (usage["state"], usage["counted_bytes"], usage["upload_bytes"], usage["overuse_bytes"],
            usage["available_bytes"]) == ("capped", 10 * GB + 300 * MB, GB, 300 * MB, 0)
    text = ok(db_url, "usage", SERVICE)
    assert "state capped" in text and "counted 10.3 GB (down)" in text
    assert "[####################]" in text and "0 B left" in text
    assert text.splitlines()[-1] == "  available 0 B, over-use 300 MB"


def test_usage_inside_a_bonus_time_frame(db_url):
    make_world(db_url, plan_args=("--bonus", "1GB", "--time-frame", "00:00-04:00"))
    feed(db_url, SERVICE, download=600 * MB, at=datetime(2026, 11, 10, 2, 0, tzinfo=timezone.utc))
    feed(db_url, SERVICE, download=100 * MB)  # 10:00, outside the frame
    usage = ok_json(db_url, "usage", SERVICE)
    assert (usage["counted_bytes"], usage["bonus_bytes"], usage["available_bytes"]) == (
        700 * MB, 600 * MB, 10 * GB - 100 * MB)
    bonus = next(b for b in usage["buckets"] if b["kind"] == "bonus")
    assert (bonus["size"], bonus["used"]) == (GB, 600 * MB)
    assert "(time frames only)" in ok(db_url, "usage", SERVICE)


def test_usage_with_unlimited_bonus_frames_is_free(db_url):
    make_world(db_url, plan_args=("--bonus-unlimited", "--time-frame", "00:00-04:00"))
    feed(db_url, SERVICE, download=600 * MB, at=datetime(2026, 11, 10, 3, 0, tzinfo=timezone.utc))
    usage = ok_json(db_url, "usage", SERVICE)
    assert (usage["counted_bytes"], usage["free_bytes"], usage["available_bytes"]) == (600 * MB, 600 * MB, 10 * GB)
    assert ok(db_url, "usage", SERVICE).splitlines()[-1] == "  available 10 GB, free (unlimited frames) 600 MB"


def test_usage_of_an_unlimited_service(db_url):
    """Regression: an unlimited service showed 'available 0 B'."""
    ok(db_url, "plan", "add", "Flat", "--unlimited")
    ok(db_url, "customer", "add", "bob")
    ok(db_url, "service", "add", "bob@isp", "--customer", "bob", "--plan", "Flat")
    feed(db_url, "bob@isp", download=3 * GB)
    usage = ok_json(db_url, "usage", "bob@isp")
    assert (usage["state"], usage["counted_bytes"], usage["buckets"], usage["available_bytes"]) == (
        "unlimited", 3 * GB, [], None)
    text = ok(db_url, "usage", "bob@isp")
    assert "state unlimited" in text and text.splitlines()[-1].startswith("  available unlimited")


def test_usage_of_an_unlimited_service_is_no_over_use(db_url):
    ok(db_url, "plan", "add", "Flat", "--unlimited")
    ok(db_url, "customer", "add", "bob")
    ok(db_url, "service", "add", "bob@isp", "--customer", "bob", "--plan", "Flat")
    feed(db_url, "bob@isp", download=3 * GB)
    assert ok_json(db_url, "usage", "bob@isp")["overuse_bytes"] == 0
    assert ok(db_url, "usage", "bob@isp").splitlines()[-1] == "  available unlimited"


def test_usage_periods_follow_the_customer_time_zone_and_billing_day(db_url):
    make_world(db_url, customer_args=("--billing-day", "15", "--timezone", "America/New_York"))
    usage = ok_json(db_url, "usage", SERVICE)
    assert (usage["period_start"], usage["period_end"]) == (
        "2026-10-15T04:00:00+00:00", "2026-11-15T05:00:00+00:00")  # EDT, then EST
    assert "period 2026-10-15 - 2026-11-15" in ok(db_url, "usage", SERVICE)


# --------------------------------------------------------------------------- history

def _two_months_of_topups(db_url, customer_args=()):
    with freeze_time("2026-10-15 09:30:00"):
        make_world(db_url, customer_args=customer_args)
        ok(db_url, "topup", "add", SERVICE, "--plan", "5GB", env={"RLM_CAP_ACTOR": "october"})
    ok(db_url, "topup", "add", SERVICE, "--size", "1GB", "--price", "2", env={"RLM_CAP_ACTOR": "november"})


def test_history_per_period(db_url):
    _two_months_of_topups(db_url)
    october = ok(db_url, "history", SERVICE, "--period", "2026-10").splitlines()
    assert october[0] == f"{SERVICE}  period 2026-10-01 - 2026-11-01"
    assert len(october) == 2
    assert october[1].split() == ["2026-10-15", "09:30", "topup", "+5", "GB", "10.00", "october",
                                  "Top-Up", "charge", "5", "GB", "for", "Home", "internet"]
    current = ok(db_url, "history", SERVICE).splitlines()
    assert current[0] == f"{SERVICE}  period 2026-11-01 - 2026-12-01"
    assert len(current) == 2 and current[1].split()[:7] == [
        "2026-11-10", "10:00", "topup", "+1", "GB", "2.00", "november"]
    assert ok(db_url, "history", SERVICE, "--period", "2026-11") == ok(db_url, "history", SERVICE)
    assert ok(db_url, "history", SERVICE, "--period", "2026-09").splitlines() == [
        f"{SERVICE}  period 2026-09-01 - 2026-10-01", "  (nothing in this period)"]


def test_history_all_and_json(db_url):
    _two_months_of_topups(db_url)
    everything = ok(db_url, "history", SERVICE, "--all").splitlines()
    assert [line.split()[0] for line in everything] == ["2026-10-15", "2026-11-10"]
    rows = ok_json(db_url, "history", SERVICE, "--all")
    assert [(r["at"], r["kind"], r["size"], r["amount"], r["actor"]) for r in rows] == [
        ("2026-10-15T09:30:00+00:00", "topup", 5 * GB, "10.00", "october"),
        ("2026-11-10T10:00:00+00:00", "topup", GB, "2.00", "november")]
    assert all(isinstance(r["bucket_id"], int) for r in rows)
    assert ok_json(db_url, "history", SERVICE, "--period", "2026-10") == rows[:1]
    assert ok_json(db_url, "history", SERVICE) == rows[1:]


def test_rollover_at_period_close_shows_in_usage_and_history(db_url):
    with freeze_time("2026-10-20 10:00:00"):
        make_world(db_url, plan_args=("--rollover",))
        ok(db_url, "settings", "set", "rollover_months", "2", "--plan", PLAN)
        feed(db_url, SERVICE, 4 * GB)
    usage = ok_json(db_url, "usage", SERVICE)  # the first look at November opens it
    assert [(b["kind"], b["size"], b["used"], b["valid_until"]) for b in usage["buckets"]] == [
        ("monthly", 10 * GB, 0, "2026-12-01T00:00:00+00:00"),
        ("rollover", 6 * GB, 0, "2027-01-01T00:00:00+00:00")]
    assert usage["available_bytes"] == 16 * GB
    assert ok(db_url, "history", SERVICE).splitlines()[1].split() == [
        "2026-11-01", "00:00", "rollover", "+6", "GB", "system", "unused", "monthly", "data", "of", "the",
        "period", "from", "2026-10-01,", "valid", "until", "2027-01-01"]
    assert ok(db_url, "history", SERVICE, "--period", "2026-10").splitlines()[1:] == ["  (nothing in this period)"]


def test_history_is_shown_in_the_service_time_zone(db_url):
    _two_months_of_topups(db_url, customer_args=("--timezone", "Europe/Berlin"))
    assert ok(db_url, "history", SERVICE).splitlines()[1].split()[:2] == ["2026-11-10", "11:00"]


def test_history_period_with_billing_day_31(db_url):
    """Regression: --period picked day 28, i.e. the period *before* the one starting in that month."""
    with freeze_time("2026-12-05 10:00:00"):
        make_world(db_url, customer_args=("--billing-day", "31"))
        ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
        november = ok(db_url, "history", SERVICE, "--period", "2026-11").splitlines()
        assert november[0] == f"{SERVICE}  period 2026-11-30 - 2026-12-31"
        assert november[1].split()[:3] == ["2026-12-05", "10:00", "topup"]
        assert ok(db_url, "history", SERVICE, "--period", "2026-10").splitlines()[0] == \
            f"{SERVICE}  period 2026-10-31 - 2026-11-30"


# --------------------------------------------------------------------------- simulate

def test_simulate_after_cap_without_auto_topup_applies_the_cap_action(db_url):
    make_world(db_url)
    before = snapshot(db_url)
    lines = ok(db_url, "simulate", "--plan", PLAN, "--after-cap", "100MB", "--start", "2026-11-03T10:00").splitlines()
    assert lines == [
        f"simulation of plan '{PLAN}' (no live data touched)",
        "2026-11-03 10:00  +10 GB           used 10 GB of 10 GB  state capped",
        "    -> CAP action: reduce 5M/10M",
        "    -> CoA-Request to the NAS (rate 5M/10M)",
        "2026-11-03 11:00  +100 MB          used 10 GB of 10 GB  state capped"]
    assert snapshot(db_url) == before  # no live data touched


def test_simulate_default_start_is_today_at_noon(db_url):
    make_world(db_url)
    steps = ok_json(db_url, "simulate", "--plan", PLAN, "--use", "1GB", "--use", "2GB", "--interval", "30m")
    assert [(s["at"], s["download"], s["used"], s["available"], s["state"]) for s in steps] == [
        ("2026-11-10T12:00:00+00:00", GB, GB, 10 * GB, "ok"),
        ("2026-11-10T12:30:00+00:00", 2 * GB, 3 * GB, 10 * GB, "ok")]


def test_simulate_block_action_sends_a_disconnect(db_url):
    ok(db_url, "plan", "add", "Blocky", "--limit", "1GB")
    steps = ok_json(db_url, "simulate", "--plan", "Blocky", "--after-cap", "1MB", "--start", "2026-11-03T10:00")
    assert steps[0]["state"] == "capped"
    assert steps[0]["events"] == ["CAP action: block", "Disconnect-Request to the NAS"]


def _auto_topup_plan(db_url):
    ok(db_url, "plan", "add", "Auto", "--limit", "10GB", "--action", "fixed", "--fixed-rate", "1M/1M")
    ok(db_url, "topup-plan", "add", "Auto", "1GB", "--size", "1GB", "--price", "5")
    ok(db_url, "plan", "edit", "Auto", "--auto-topup-plan", "1GB", "--trigger", "10")
    ok(db_url, "settings", "set", "check_balance", "yes")


def test_simulate_with_auto_topup_and_enough_balance(db_url):
    _auto_topup_plan(db_url)
    steps = ok_json(db_url, "simulate", "--plan", "Auto", "--after-cap", "500MB", "--balance", "10",
                    "--start", "2026-11-03T10:00")
    assert [(s["used"], s["available"], s["state"]) for s in steps] == [
        (10 * GB, 10 * GB, "ok"),  # within the 10 % trigger of the top-up: keeps running
        (10 * GB + 500 * MB, 11 * GB, "ok")]
    assert steps[0]["events"] == []
    assert steps[1]["events"] == [
        "auto topup: Auto Top-Up 1 GB for simulated service; 500 MB of earlier over-use charged to it, 5.00"]
    text = ok(db_url, "simulate", "--plan", "Auto", "--after-cap", "500MB", "--balance", "10",
              "--start", "2026-11-03T10:00")
    assert "    -> auto topup: Auto Top-Up 1 GB for simulated service" in text


def test_simulate_with_auto_topup_but_too_little_balance(db_url):
    _auto_topup_plan(db_url)
    steps = ok_json(db_url, "simulate", "--plan", "Auto", "--after-cap", "500MB", "--balance", "4.99",
                    "--start", "2026-11-03T10:00")
    assert [s["state"] for s in steps] == ["capped", "capped"]
    assert steps[0]["events"] == [
        "CAP action: fixed 1M/1M (auto top-up refused: balance 4.99 is below the price 5.00)",
        "CoA-Request to the NAS (rate 1M/1M)"]


def test_simulate_with_the_subscriber_auto_topup_switch_off(db_url):
    _auto_topup_plan(db_url)
    steps = ok_json(db_url, "simulate", "--plan", "Auto", "--after-cap", "500MB", "--balance", "100",
                    "--no-auto-topup", "--start", "2026-11-03T10:00")
    assert steps[0]["state"] == "capped" and steps[0]["events"][0] == "CAP action: fixed 1M/1M"
    assert not any("auto topup" in e for s in steps for e in s["events"])


def test_simulate_scenario_file_with_upload_and_notifications(db_url, tmp_path):
    ok(db_url, "plan", "add", "Small", "--limit", "1GB", "--direction", "up+down",
       "--compensate", "--overuse-price", "2", "--action", "fixed", "--fixed-rate", "1M/1M")
    ok(db_url, "notification", "add", "Small", "--source", "monthly", "--threshold", "50",
       "--subject", "half used", "--body", "Hi {{ customer.name }}")
    scenario = tmp_path / "scenario.txt"
    scenario.write_text("# a day of use\n2026-11-03T10:00 500MB\n\n2026-11-03T11:00 600MB 100MB\n")
    steps = ok_json(db_url, "simulate", "--plan", "Small", "--file", str(scenario))
    assert [(s["at"], s["download"], s["upload"], s["used"], s["available"], s["state"]) for s in steps] == [
        ("2026-11-03T10:00:00+00:00", 500 * MB, 0, 500 * MB, GB, "ok"),
        ("2026-11-03T11:00:00+00:00", 600 * MB, 100 * MB, 1200 * MB, 1200 * MB, "capped")]
    assert steps[0]["events"] == ["notification monthly 50% via email: 'half used'"]
    assert steps[1]["events"] == ["compensation: Over-usage 200 MB for simulated service, 0.40",
                                  "CAP action: fixed 1M/1M", "CoA-Request to the NAS (rate 1M/1M)"]
    text = ok(db_url, "simulate", "--plan", "Small", "--file", str(scenario)).splitlines()
    assert text[3] == "2026-11-03 11:00  +600 MB / up 100 MB used 1.2 GB of 1.2 GB  state capped"


# --------------------------------------------------------------------------- settings

def _effective(db_url, name, *scope):
    return ok_json(db_url, "settings", "get", name, *scope)[name]


def test_settings_layers_and_where_each_value_comes_from(db_url):
    make_world(db_url, customer_args=("--partner", "north"))
    service = ("--service", SERVICE)
    assert _effective(db_url, "max_topups_per_month", *service) == {"value": 0, "from": "default"}

    steps = [
        (("max_topups_per_month", "6"), (), {"value": 6, "from": "global"}),
        (("max_topups_per_month", "5", "--partner", "north"), (), {"value": 5, "from": "partner"}),
        (("max_topups_per_month", "4", "--plan", PLAN), (), {"value": 4, "from": "plan"}),
        (("max_topups_per_month", "3", "--customer", CUSTOMER), (), {"value": 3, "from": "customer"}),
        (("max_topups_per_month", "2", "--service", SERVICE), (), {"value": 2, "from": "service"}),
    ]
    scopes = ["global", "partner", "plan", "customer", "service"]
    for (args, _, expected), scope in zip(steps, scopes):
        assert ok(db_url, "settings", "set", *args).strip() == f"max_topups_per_month = {args[1]} at {scope} scope"
        assert _effective(db_url, "max_topups_per_month", *service) == expected

    # Each scope on its own sees the layers above it only.
    assert _effective(db_url, "max_topups_per_month") == {"value": 6, "from": "global"}
    assert _effective(db_url, "max_topups_per_month", "--partner", "north") == {"value": 5, "from": "partner"}
    assert _effective(db_url, "max_topups_per_month", "--plan", PLAN) == {"value": 4, "from": "plan"}
    assert _effective(db_url, "max_topups_per_month", "--customer", CUSTOMER) == {"value": 3, "from": "customer"}

    # '-' removes a value at one scope; the next layer up shows through.
    for scope, expected in [(("--service", SERVICE), {"value": 3, "from": "customer"}),
                            (("--customer", CUSTOMER), {"value": 4, "from": "plan"}),
                            (("--plan", PLAN), {"value": 5, "from": "partner"}),
                            (("--partner", "north"), {"value": 6, "from": "global"}),
                            ((), {"value": 0, "from": "default"})]:
        assert "removed at" in ok(db_url, "settings", "set", "max_topups_per_month", "-", *scope)
        assert _effective(db_url, "max_topups_per_month", *service) == expected


def test_settings_get_text_and_all_names(db_url):
    make_world(db_url)
    ok(db_url, "settings", "set", "check_balance", "on")
    ok(db_url, "settings", "set", "timezone", "Europe/Berlin", "--service", SERVICE)
    line = ok(db_url, "settings", "get", "timezone", "--service", SERVICE)
    assert line.split() == ["timezone", "Europe/Berlin", "(service)"]
    everything = ok_json(db_url, "settings", "get", "--service", SERVICE)
    assert everything["check_balance"] == {"value": True, "from": "global"}
    assert everything["timezone"] == {"value": "Europe/Berlin", "from": "service"}
    assert everything["rollover_months"] == {"value": 1, "from": "default"}
    assert len(everything) == 14
    text = ok(db_url, "settings", "get", "--service", SERVICE).splitlines()
    assert len(text) == 14 and text[0].split()[0] == "admin_topup_description"
    assert next(l for l in text if l.startswith("check_balance")).split() == ["check_balance", "True", "(global)"]


def test_settings_set_for_a_new_partner_creates_it_for_customers_to_join(db_url):
    assert "no partner 'west'" in fails(db_url, "settings", "get", "--partner", "west")
    assert ok(db_url, "settings", "set", "check_balance", "yes", "--partner", "west").strip() == \
        "check_balance = yes at partner scope"
    assert _effective(db_url, "check_balance", "--partner", "west") == {"value": True, "from": "partner"}
    ok(db_url, "customer", "add", "bob", "--partner", "west")
    assert ok_json(db_url, "customer", "show", "bob")["partner"] == "west"
    assert _effective(db_url, "check_balance", "--customer", "bob") == {"value": True, "from": "partner"}
    ok(db_url, "customer", "add", "carol")
    assert _effective(db_url, "check_balance", "--customer", "carol") == {"value": False, "from": "default"}


def test_service_setting_changes_behaviour(db_url):
    """A setting at service scope is what the top-up rules read."""
    make_world(db_url)
    ok(db_url, "settings", "set", "max_topups_per_month", "1", "--service", SERVICE)
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    assert "limit of 1 top-ups per month" in fails(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    ok(db_url, "settings", "set", "max_topups_per_month", "-", "--service", SERVICE)
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
