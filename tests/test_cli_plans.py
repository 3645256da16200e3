"""capctl plan / topup-plan / notification: what operators configure, read back through the CLI."""

from __future__ import annotations

import re
from datetime import time

from tests.cli_helpers import GB, MB, PLAN, connect, fails, ok, ok_json
from rlm_cap import store
from rlm_cap.periods import ALL_DAYS


def _plan_id(output: str) -> int:
    return int(re.search(r"\(id (\d+)\)", output).group(1))


def test_plan_add_with_every_cap_option(db_url):
    out = ok(db_url, "plan", "add", "Night 10GB", "--limit", "10GB", "--direction", "down",
             "--action", "reduce", "--reduce-percent", "50", "--rate", "10M/20M",
             "--bonus", "5GB", "--bonus-after-cap",
             "--time-frame", "00:00-04:00", "--time-frame", "22:00-06:00 sat,sun",
             "--rollover", "--use-topup-first", "--compensate", "--overuse-price", "2.5")
    assert out.startswith("plan 'Night 10GB' added (id ")

    plan = ok_json(db_url, "plan", "show", "Night 10GB")
    assert plan["id"] == _plan_id(out)
    assert {k: plan[k] for k in ("name", "monthly_limit", "direction", "action", "reduce_percent",
                                 "normal_rate", "fixed_rate", "bonus_limit", "bonus_unlimited",
                                 "bonus_after_cap", "rollover", "compensate", "overuse_price_per_gb",
                                 "auto_topup_plan", "auto_topup_trigger_percent")} == {
        "name": "Night 10GB", "monthly_limit": 10 * GB, "direction": "down", "action": "reduce",
        "reduce_percent": 50, "normal_rate": "10M/20M", "fixed_rate": None, "bonus_limit": 5 * GB,
        "bonus_unlimited": False, "bonus_after_cap": True, "rollover": True, "compensate": True,
        "overuse_price_per_gb": "2.5000", "auto_topup_plan": None, "auto_topup_trigger_percent": 0}
    assert plan["time_frames"] == ["00:00-04:00", "22:00-06:00 sat,sun"]
    assert plan["settings"] == {"use_topup_first": "yes"}
    assert plan["topup_plans"] == [] and plan["notifications"] == []

    # What the policy engine will load: weekday sets and the plan-scope setting.
    with connect(db_url) as conn:
        loaded = store.load_plan(conn, plan["id"])
        layers = store.setting_layers(conn, [("plan", plan["id"]), ("global", 0)])
    assert [(f.start, f.end, f.days) for f in loaded.time_frames] == [
        (time(0), time(4), ALL_DAYS), (time(22), time(6), frozenset({5, 6}))]
    assert loaded.rate_when_capped() == "5M/10M"
    assert layers == [{"use_topup_first": "yes"}, {}]
    assert ok_json(db_url, "settings", "get", "use_topup_first", "--plan", "Night 10GB") == {
        "use_topup_first": {"value": True, "from": "plan"}}


def test_plan_show_text(db_url):
    ok(db_url, "plan", "add", "Night 10GB", "--limit", "10GB", "--direction", "down",
       "--action", "reduce", "--reduce-percent", "50", "--rate", "10M/20M", "--bonus", "5GB",
       "--bonus-after-cap", "--time-frame", "00:00-04:00", "--time-frame", "22:00-06:00 sat,sun",
       "--rollover", "--no-use-topup-first", "--compensate", "--overuse-price", "2.5")
    ok(db_url, "topup-plan", "add", "Night 10GB", "5GB", "--size", "5GB", "--price", "10", "--valid-months", "1")
    ok(db_url, "notification", "add", "Night 10GB", "--source", "monthly", "--threshold", "80",
       "--subject", "80% used", "--body", "Hi {{ customer.name }}")
    lines = ok(db_url, "plan", "show", "Night 10GB").splitlines()
    assert lines[0].startswith("plan Night 10GB (id ")
    text = "\n".join(lines)
    assert "monthly limit   10 GB (down)" in text
    assert "at the CAP      reduce 50% of 10M/20M" in text
    assert "normal rate     10M/20M" in text
    assert "bonus           5 GB in 00:00-04:00, 22:00-06:00 sat,sun, also after the CAP" in text
    assert "rollover        yes" in text
    assert "auto top-up     -" in text
    assert "compensate      yes, 2.5000 per GB" in text
    assert "use_topup_first no" in text
    assert "top-up plan     5GB: 5 GB for 10.00, valid 1 months" in text
    assert re.search(r"notification    #\d+ monthly 80% by email: 80% used", text)


def test_plan_add_defaults_block_up_and_down(db_url):
    ok(db_url, "plan", "add", "Basic", "--limit", "1.5GB")
    plan = ok_json(db_url, "plan", "show", "Basic")
    assert (plan["monthly_limit"], plan["direction"], plan["action"], plan["rollover"], plan["compensate"],
            plan["bonus_limit"], plan["time_frames"], plan["settings"]) == (
        1_500_000_000, "up+down", "block", False, False, 0, [], {})
    text = ok(db_url, "plan", "show", "Basic")
    assert "at the CAP      block" in text
    assert "bonus           0 B (no time frames)" in text
    assert "rollover        no" in text and "compensate      no" in text


def test_plan_add_unlimited_and_its_services_are_unlimited(db_url):
    ok(db_url, "plan", "add", "Flat", "--unlimited", "--direction", "up")
    plan = ok_json(db_url, "plan", "show", "Flat")
    assert plan["monthly_limit"] is None and plan["direction"] == "up"
    assert "monthly limit   unlimited (up)" in ok(db_url, "plan", "show", "Flat")
    ok(db_url, "customer", "add", "bob")
    ok(db_url, "service", "add", "bob@isp", "--customer", "bob", "--plan", "Flat")
    assert ok_json(db_url, "service", "show", "bob@isp")["cap_state"] == "unlimited"


def test_plan_add_action_fixed(db_url):
    ok(db_url, "plan", "add", "Fixed", "--limit", "20GB", "--action", "fixed", "--fixed-rate", "1M/1M")
    plan = ok_json(db_url, "plan", "show", "Fixed")
    assert (plan["action"], plan["fixed_rate"]) == ("fixed", "1M/1M")
    assert "at the CAP      fixed 1M/1M" in ok(db_url, "plan", "show", "Fixed")


def test_plan_add_bonus_unlimited(db_url):
    ok(db_url, "plan", "add", "Nights free", "--limit", "10GB", "--bonus-unlimited",
       "--time-frame", "01:00-07:00 mon,tue,wed,thu,fri")
    plan = ok_json(db_url, "plan", "show", "Nights free")
    assert plan["bonus_unlimited"] is True and plan["bonus_after_cap"] is False
    assert plan["time_frames"] == ["01:00-07:00 mon,tue,wed,thu,fri"]
    assert "bonus           unlimited in 01:00-07:00 mon,tue,wed,thu,fri" in ok(db_url, "plan", "show", "Nights free")


def test_plan_list_text_and_json(db_url):
    ok(db_url, "plan", "add", "Zeta", "--limit", "500MB", "--action", "fixed", "--fixed-rate", "512k/512k")
    ok(db_url, "plan", "add", "Alpha", "--unlimited")
    lines = ok(db_url, "plan", "list").splitlines()
    assert len(lines) == 2
    assert lines[0].split() == [lines[0].split()[0], "Alpha", "unlimited", "block"]
    assert lines[1].split()[1:] == ["Zeta", "500", "MB", "fixed"]
    rows = ok_json(db_url, "plan", "list")
    assert [(r["name"], r["monthly_limit"], r["action"]) for r in rows] == [
        ("Alpha", None, "block"), ("Zeta", 500 * MB, "fixed")]


def test_plan_list_empty(db_url):
    assert ok(db_url, "plan", "list") == ""
    assert ok_json(db_url, "plan", "list") == []


def test_plan_edit_rename_keeps_the_plan_and_its_other_values(db_url):
    plan_id = _plan_id(ok(db_url, "plan", "add", PLAN, "--limit", "10GB", "--action", "reduce",
                          "--reduce-percent", "50", "--rate", "10M/20M", "--time-frame", "00:00-04:00"))
    assert ok(db_url, "plan", "edit", PLAN, "--name", "Home 12GB", "--limit", "12GB").strip() == \
        "plan 'Home 12GB' updated"
    plan = ok_json(db_url, "plan", "show", "Home 12GB")
    assert plan["id"] == plan_id
    assert (plan["monthly_limit"], plan["action"], plan["reduce_percent"], plan["normal_rate"]) == (
        12 * GB, "reduce", 50, "10M/20M")
    assert plan["time_frames"] == ["00:00-04:00"]  # not given: unchanged
    assert "no plan 'Home 10GB'" in fails(db_url, "plan", "show", PLAN)


def test_plan_edit_auto_topup_plan_and_trigger(db_url):
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB")
    ok(db_url, "topup-plan", "add", PLAN, "1GB", "--size", "1GB", "--price", "3")
    ok(db_url, "topup-plan", "add", PLAN, "5GB", "--size", "5GB", "--price", "10")
    ok(db_url, "plan", "edit", PLAN, "--auto-topup-plan", "5GB", "--trigger", "10")
    plan = ok_json(db_url, "plan", "show", PLAN)
    five = next(t for t in plan["topup_plans"] if t["name"] == "5GB")
    assert (plan["auto_topup_plan"], plan["auto_topup_plan_id"], plan["auto_topup_trigger_percent"]) == (
        "5GB", five["id"], 10)
    assert "auto top-up     5GB (trigger 10%)" in ok(db_url, "plan", "show", PLAN)
    with connect(db_url) as conn:
        loaded = store.load_plan(conn, plan["id"])
    assert loaded.auto_topup_plan.size == 5 * GB and loaded.auto_topup_trigger_percent == 10


def test_plan_edit_time_frames_replace_and_remove(db_url):
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB", "--bonus", "2GB",
       "--time-frame", "00:00-04:00", "--time-frame", "12:00-13:00")
    ok(db_url, "plan", "edit", PLAN, "--time-frame", "02:00-05:00 sun")
    assert ok_json(db_url, "plan", "show", PLAN)["time_frames"] == ["02:00-05:00 sun"]
    ok(db_url, "plan", "edit", PLAN, "--no-time-frames")
    plan = ok_json(db_url, "plan", "show", PLAN)
    assert plan["time_frames"] == []
    assert plan["bonus_limit"] == 2 * GB


def test_plan_edit_switches_flags_and_settings(db_url):
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB", "--rollover", "--use-topup-first", "--bonus-after-cap")
    ok(db_url, "plan", "edit", PLAN, "--no-rollover", "--no-use-topup-first", "--no-bonus-after-cap",
       "--action", "fixed", "--fixed-rate", "2M/2M", "--unlimited")
    plan = ok_json(db_url, "plan", "show", PLAN)
    assert (plan["rollover"], plan["bonus_after_cap"], plan["action"], plan["fixed_rate"],
            plan["monthly_limit"], plan["settings"]) == (False, False, "fixed", "2M/2M", None,
                                                         {"use_topup_first": "no"})


def test_topup_plan_add_and_list(db_url):
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB")
    assert ok(db_url, "topup-plan", "add", PLAN, "5GB", "--size", "5GB", "--price", "10").startswith(
        "top-up plan '5GB' added to 'Home 10GB' (id ")
    ok(db_url, "topup-plan", "add", PLAN, "Month 1GB", "--size", "1GB", "--price", "2.999",
       "--valid-months", "1", "--category", "Data", "--add-to-invoice")
    rows = ok_json(db_url, "topup-plan", "list", PLAN)
    assert [(r["name"], r["size"], r["price"], r["valid_months"], r["category"], r["add_to_invoice"])
            for r in rows] == [("Month 1GB", GB, "3.00", 1, "Data", True),
                               ("5GB", 5 * GB, "10.00", None, "Top-up", False)]
    lines = ok(db_url, "topup-plan", "list", PLAN).splitlines()
    assert lines[0].split()[1:] == ["Month", "1GB", "1", "GB", "3.00", "1", "months", "on", "invoice"]
    assert lines[1].split()[1:] == ["5GB", "5", "GB", "10.00", "no", "expiry"]


def test_plan_copy_topups_keeps_names_the_target_has(db_url):
    ok(db_url, "plan", "add", "Source", "--limit", "10GB")
    ok(db_url, "plan", "add", "Target", "--limit", "50GB")
    ok(db_url, "topup-plan", "add", "Source", "5GB", "--size", "5GB", "--price", "10")
    ok(db_url, "topup-plan", "add", "Source", "10GB", "--size", "10GB", "--price", "15",
       "--valid-months", "3", "--category", "Data", "--add-to-invoice")
    ok(db_url, "topup-plan", "add", "Target", "5GB", "--size", "5GB", "--price", "8")
    assert ok(db_url, "plan", "copy-topups", "Source", "Target").strip() == "1 top-up plan(s) copied to 'Target'"
    rows = ok_json(db_url, "topup-plan", "list", "Target")
    assert [(r["name"], r["size"], r["price"], r["valid_months"], r["category"], r["add_to_invoice"])
            for r in rows] == [("5GB", 5 * GB, "8.00", None, "Top-up", False),
                               ("10GB", 10 * GB, "15.00", 3, "Data", True)]
    assert len(ok_json(db_url, "topup-plan", "list", "Source")) == 2
    assert ok(db_url, "plan", "copy-topups", "Source", "Target").strip() == "0 top-up plan(s) copied to 'Target'"


def test_notification_add_list_and_copy(db_url, tmp_path):
    ok(db_url, "plan", "add", "Source", "--limit", "10GB")
    ok(db_url, "plan", "add", "Target", "--limit", "50GB")
    body = "Hello {{ customer.name }},\n\nyou used 80% of {{ service.description }}.\n"
    body_file = tmp_path / "body.txt"
    body_file.write_text(body)
    out = ok(db_url, "notification", "add", "Source", "--source", "monthly", "--threshold", "80",
             "--channel", "both", "--subject", "80% used", "--body-file", str(body_file))
    assert re.fullmatch(r"notification #\d+ added to 'Source'\n", out)
    ok(db_url, "notification", "add", "Source", "--source", "auto_topup_action", "--channel", "sms",
       "--body", "Auto top-up {{ size }} applied")
    rules = ok_json(db_url, "notification", "list", "Source")
    assert [(r["source"], r["threshold_percent"], r["channel"], r["subject"], r["body"]) for r in rules] == [
        ("monthly", 80, "both", "80% used", body),
        ("auto_topup_action", 0, "sms", "", "Auto top-up {{ size }} applied")]
    lines = ok(db_url, "notification", "list", "Source").splitlines()
    assert re.fullmatch(r"#\d+\s+monthly 80% by both: 80% used", lines[0])
    assert re.fullmatch(r"#\d+\s+auto_topup_action by sms: ", lines[1])

    assert ok(db_url, "plan", "copy-notifications", "Source", "Target").strip() == \
        "2 notification rule(s) copied to 'Target'"
    copied = ok_json(db_url, "notification", "list", "Target")
    assert [(r["source"], r["threshold_percent"], r["channel"], r["subject"], r["body"]) for r in copied] == \
        [(r["source"], r["threshold_percent"], r["channel"], r["subject"], r["body"]) for r in rules]
    assert {r["id"] for r in copied}.isdisjoint({r["id"] for r in rules})
    assert len(ok_json(db_url, "plan", "show", "Target")["notifications"]) == 2


def test_numeric_plan_and_topup_plan_names_are_not_taken_for_ids(db_url):
    """Regression: `plan add 7` was refused as a duplicate when some plan had id 7."""
    first = _plan_id(ok(db_url, "plan", "add", "First", "--limit", "1GB"))
    ok(db_url, "plan", "add", str(first), "--limit", "2GB")
    assert ok_json(db_url, "plan", "show", str(first))["monthly_limit"] == 2 * GB
    assert ok_json(db_url, "plan", "show", "First")["monthly_limit"] == GB

    out = ok(db_url, "topup-plan", "add", "First", "1GB", "--size", "1GB", "--price", "3")
    topup_id = _plan_id(out)
    ok(db_url, "topup-plan", "add", "First", str(topup_id), "--size", "2GB", "--price", "5")
    assert sorted(r["name"] for r in ok_json(db_url, "topup-plan", "list", "First")) == sorted(
        ["1GB", str(topup_id)])
