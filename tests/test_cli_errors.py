"""capctl refuses bad input with a one-line message and changes nothing.

Every case runs against a populated database (plans, top-up plans, a
notification rule, a customer with a service, a top-up, usage, a setting) and
compares every row of every table before and after the refused command.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from freezegun import freeze_time
from sqlalchemy import create_engine, inspect, text

from tests.cli_helpers import (
    CUSTOMER, GB, PLAN, SERVICE, buckets, connect, customer, fails, feed, make_world, ok, snapshot,
)
from rlm_cap import store

NOW = datetime(2026, 11, 10, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def frozen():
    """The CLI reads the real clock: every test of this module runs at NOW (one freeze, it is slow)."""
    with freeze_time(NOW):
        yield


@pytest.fixture
def populated(db_url):
    make_world(db_url, customer_args=("--partner", "north"))
    ok(db_url, "plan", "add", "Big 50GB", "--limit", "50GB", "--bonus", "1GB", "--time-frame", "00:00-04:00")
    ok(db_url, "notification", "add", PLAN, "--source", "monthly", "--threshold", "80", "--body", "80% used")
    ok(db_url, "topup", "add", SERVICE, "--plan", "5GB")
    feed(db_url, SERVICE, 2 * GB)
    ok(db_url, "settings", "set", "transfer_usage", "yes", "--plan", PLAN)
    return db_url


def refused(db_url: str, cases) -> None:
    """Each (args, expected fragment of the error line): refused, and the database unchanged."""
    before = snapshot(db_url)
    for args, expected in cases:
        message = fails(db_url, *args)
        assert expected in message, (args, message)
        assert snapshot(db_url) == before, f"capctl {' '.join(map(str, args))} changed the database"


def _unknown_plan(populated):
    no_plan = "Error: no plan 'Nope'; see: capctl plan list"
    refused(populated, [
        (("plan", "show", "Nope"), no_plan),
        (("plan", "show", "Nope", "--json"), no_plan),
        (("plan", "edit", "Nope", "--limit", "1GB"), no_plan),
        (("plan", "copy-topups", PLAN, "Nope"), no_plan),
        (("plan", "copy-notifications", "Nope", PLAN), no_plan),
        (("topup-plan", "add", "Nope", "1GB", "--size", "1GB", "--price", "1"), no_plan),
        (("topup-plan", "list", "Nope"), no_plan),
        (("notification", "add", "Nope", "--source", "monthly", "--threshold", "80", "--body", "x"), no_plan),
        (("notification", "list", "Nope"), no_plan),
        (("service", "add", "bob@isp", "--customer", CUSTOMER, "--plan", "Nope"), no_plan),
        (("service", "change-plan", SERVICE, "Nope"), no_plan),
        (("simulate", "--plan", "Nope", "--use", "1GB"), no_plan),
        (("settings", "get", "--plan", "Nope"), no_plan),
        (("settings", "set", "check_balance", "yes", "--plan", "Nope"), no_plan),
    ])


def _unknown_service(populated):
    no_service = ("Error: no service 'nobody'; add one with: capctl service add USERNAME --customer C --plan P")
    refused(populated, [
        (("service", "show", "nobody"), no_service),
        (("service", "change-plan", "nobody", "Big 50GB"), no_service),
        (("usage", "nobody"), no_service),
        (("history", "nobody"), no_service),
        (("topup", "add", "nobody", "--plan", "5GB"), no_service),
        (("topup", "remove", "nobody", "1"), no_service),
        (("bonus", "add", "nobody", "--size", "1GB"), no_service),
        (("settings", "get", "--service", "nobody"), no_service),
        (("settings", "set", "check_balance", "yes", "--service", "nobody"), no_service),
        # User-Names are exact: another case is another subscriber.
        (("usage", "ALICE@isp"), "no service 'ALICE@isp'"),
    ])


def _unknown_customer_and_partner(populated):
    no_customer = "Error: no customer 'bob'; add one with: capctl customer add NAME"
    refused(populated, [
        (("customer", "show", "bob"), no_customer),
        (("balance", "add", "bob", "10"), no_customer),
        (("service", "add", "bob@isp", "--customer", "bob", "--plan", PLAN), no_customer),
        (("settings", "get", "--customer", "bob"), no_customer),
        (("settings", "set", "check_balance", "yes", "--customer", "bob"), no_customer),
        (("settings", "get", "--partner", "south"), "Error: no partner 'south'"),
    ])


def _unknown_topup_plan_and_bucket(populated):
    monthly = next(b["id"] for b in buckets(populated) if b["kind"] == "monthly")
    refused(populated, [
        (("topup", "add", SERVICE, "--plan", "7GB"),
         "Error: no top-up plan '7GB' in plan 'Home 10GB'; see: capctl topup-plan list 'Home 10GB'"),
        (("plan", "edit", PLAN, "--auto-topup-plan", "7GB"), "no top-up plan '7GB' in plan 'Home 10GB'"),
        # A top-up plan belongs to its plan.
        (("plan", "edit", "Big 50GB", "--auto-topup-plan", "5GB"), "no top-up plan '5GB' in plan 'Big 50GB'"),
        (("plan", "add", "New", "--limit", "1GB", "--auto-topup-plan", "5GB"), "add the plan first"),
        (("topup", "remove", SERVICE, "999999"), "has no top-up or bonus bucket 999999"),
        (("topup", "remove", SERVICE, monthly), f"has no top-up or bonus bucket {monthly}"),
    ])


def _bad_sizes(populated):
    refused(populated, [
        (("plan", "add", "X", "--limit", "-5GB"), "Invalid value for '--limit'"),
        (("plan", "add", "X", "--limit", "10XB"), "unknown unit 'XB'"),
        (("plan", "add", "X", "--limit", "ten"), "Invalid value for '--limit'"),
        (("plan", "edit", PLAN, "--bonus", "10XB"), "unknown unit 'XB'"),
        (("topup-plan", "add", PLAN, "X", "--size", "-1GB", "--price", "1"), "Invalid value for '--size'"),
        (("topup-plan", "add", PLAN, "X", "--size", "0", "--price", "1"), "--size must be above zero"),
        (("topup-plan", "add", PLAN, "X", "--size", "1GB", "--price", "-1"), "--price must not be negative"),
        (("topup-plan", "add", PLAN, "X", "--size", "1GB", "--price", "ten"), "Invalid value for '--price'"),
        (("topup", "add", SERVICE, "--size", "-1GB", "--price", "1"), "Invalid value for '--size'"),
        (("topup", "add", SERVICE, "--size", "10XB", "--price", "1"), "unknown unit 'XB'"),
        (("topup", "add", SERVICE, "--size", "0", "--price", "1"), "above zero"),
        (("topup", "add", SERVICE, "--size", "1GB", "--price", "-1"), "must not be negative"),
        (("topup", "remove", SERVICE, "1", "--size", "-1GB"), "Invalid value for '--size'"),
        (("bonus", "add", SERVICE, "--size", "-2GB"), "Invalid value for '--size'"),
        (("simulate", "--plan", PLAN, "--use", "10XB"), "unknown unit 'XB'"),
        (("balance", "add", CUSTOMER, "--", "-5"), "a payment must be above zero"),
        (("balance", "add", CUSTOMER, "0"), "a payment must be above zero"),
        (("balance", "add", CUSTOMER, "lots"), "not an amount of money"),
    ])
    assert "'-5GB'" in fails(populated, "plan", "add", "X", "--limit", "-5GB")


def _topup_remove_more_than_unused(populated):
    topup = next(b["id"] for b in buckets(populated) if b["kind"] == "topup")
    refused(populated, [
        (("topup", "remove", SERVICE, topup, "--size", "6GB"), f"bucket {topup} has 5 GB unused; cannot remove 6 GB"),
        (("topup", "remove", SERVICE, topup, "--size", "0"), f"bucket {topup} has 5 GB unused"),
    ])


def test_bad_rates_time_frames_and_action_options(populated):
    refused(populated, [
        (("plan", "add", "X", "--limit", "1GB", "--action", "reduce", "--reduce-percent", "50", "--rate", "fast"),
         "Invalid value for '--rate': not a rate: 'fast'"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "fixed", "--fixed-rate", "1M/1M/1M"),
         "Invalid value for '--fixed-rate'"),
        (("plan", "edit", PLAN, "--rate", "10Q/20Q"), "not a rate"),
        (("plan", "add", "X", "--limit", "1GB", "--time-frame", "25:00-26:00"),
         "Invalid value for '--time-frame': not a time frame: '25:00-26:00'"),
        (("plan", "add", "X", "--limit", "1GB", "--time-frame", "00:00-04:00 funday"), "unknown weekday"),
        (("plan", "add", "X", "--limit", "1GB", "--time-frame", "0400"), "not a time frame: '0400'"),
        (("plan", "edit", PLAN, "--time-frame", "00:00-04:00", "--time-frame", "night"), "not a time frame"),
        (("plan", "add", "X", "--limit", "1GB", "--unlimited"), "give either --limit or --unlimited, not both"),
        (("plan", "edit", PLAN, "--limit", "1GB", "--unlimited"), "give either --limit or --unlimited, not both"),
        (("plan", "add", "X"), "a plan needs --limit SIZE"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "fixed"), "action fixed needs --fixed-rate"),
        (("plan", "edit", PLAN, "--action", "fixed"), "action fixed needs --fixed-rate"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "reduce", "--reduce-percent", "50"),
         "action reduce needs --rate"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "reduce", "--rate", "10M/20M"),
         "action reduce needs --rate"),
        (("plan", "edit", "Big 50GB", "--action", "reduce"), "action reduce needs --rate"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "reduce", "--reduce-percent", "100",
          "--rate", "10M/20M"), "Invalid value for '--reduce-percent'"),
        (("plan", "add", "X", "--limit", "1GB", "--action", "throttle"), "Invalid value for '--action'"),
        (("plan", "add", "X", "--limit", "1GB", "--direction", "sideways"), "Invalid value for '--direction'"),
        (("plan", "edit", PLAN, "--trigger", "101"), "Invalid value for '--trigger'"),
    ])


# Several groups share one populated database: each refused command leaves it as it was.

def test_unknown_plans_top_up_plans_and_buckets(populated):
    _unknown_plan(populated)
    _unknown_topup_plan_and_bucket(populated)


def test_unknown_services_customers_and_partners(populated):
    _unknown_service(populated)
    _unknown_customer_and_partner(populated)


def test_bad_sizes_and_amounts(populated):
    _bad_sizes(populated)
    _topup_remove_more_than_unused(populated)


def test_unknown_settings_bad_setting_values_and_bad_periods(populated):
    _unknown_setting_and_bad_values(populated)
    _bad_period(populated)


def test_bad_templates(populated):
    _bad_template_syntax(populated)
    _broken_topup_description_templates(populated)


def test_topup_over_the_monthly_limit(populated):
    ok(populated, "settings", "set", "max_topups_per_month", "1", "--customer", CUSTOMER)
    refused(populated, [
        (("topup", "add", SERVICE, "--plan", "5GB"),
         "Error: top-up refused: the limit of 1 top-ups per month is reached (1 this month)"),
        (("topup", "add", SERVICE, "--size", "1GB", "--price", "0"), "the limit of 1 top-ups per month"),
    ])


def test_insufficient_balance_with_check_balance(populated):
    ok(populated, "settings", "set", "check_balance", "yes")
    ok(populated, "topup-plan", "add", PLAN, "50GB", "--size", "50GB", "--price", "45")
    refused(populated, [  # the balance is 40.00 after the 5 GB top-up
        (("topup", "add", SERVICE, "--plan", "50GB"), "Error: top-up refused: balance 40.00 is below the price 45.00"),
        (("topup", "add", SERVICE, "--size", "1GB", "--price", "40.01"), "balance 40.00 is below the price 40.01"),
    ])


def test_topup_and_other_option_combinations(populated):
    refused(populated, [
        (("topup", "add", SERVICE), "give either --plan NAME or --size SIZE --price AMOUNT"),
        (("topup", "add", SERVICE, "--plan", "5GB", "--size", "1GB"), "give either --plan NAME or --size"),
        (("topup", "add", SERVICE, "--size", "1GB"), "a custom top-up needs --price too"),
        (("topup", "add", SERVICE, "--plan", "5GB", "--price", "1"), "--price and --valid-months go with --size"),
        (("topup", "add", SERVICE, "--size", "1GB", "--price", "1", "--valid-months", "0"),
         "Invalid value for '--valid-months'"),
        (("service", "change-plan", SERVICE, PLAN), f"service '{SERVICE}' is on plan '{PLAN}' already"),
        (("settings", "get", "--plan", PLAN, "--customer", CUSTOMER), "give at most one of --partner"),
        (("simulate", "--plan", PLAN), "give a scenario"),
        (("simulate", "--plan", PLAN, "--use", "1GB", "--interval", "0h"), "write it like 30m, 1h or 1d"),
        (("simulate", "--plan", PLAN, "--use", "1GB", "--interval", "soon"), "write it like 30m, 1h or 1d"),
        (("simulate", "--plan", PLAN, "--use", "1GB", "--start", "tomorrow"), "is not a time like"),
        (("notification", "add", PLAN, "--source", "monthly", "--threshold", "80"), "needs --body TEXT or --body-file"),
        (("notification", "add", PLAN, "--source", "total", "--body", "x"), "source total needs --threshold"),
        (("notification", "add", PLAN, "--source", "weekly", "--threshold", "80", "--body", "x"),
         "Invalid value for '--source'"),
        (("notification", "add", PLAN, "--source", "monthly", "--threshold", "80", "--body-file", "/nonexistent/x"),
         "Invalid value for '--body-file'"),
        (("customer", "add", "bob", "--billing-day", "32"), "Invalid value for '--billing-day'"),
        (("customer", "add", "bob", "--limitation-type", "weekly"), "Invalid value for '--limitation-type'"),
        (("service", "add", "x" * 254, "--customer", CUSTOMER, "--plan", PLAN), "USERNAME must be 1-253 characters"),
    ])


def test_simulate_bad_scenarios(populated, tmp_path):
    bad_line = tmp_path / "bad-line.txt"
    bad_line.write_text("2026-11-03T10:00 1GB\nyesterday lots\n")
    out_of_order = tmp_path / "order.txt"
    out_of_order.write_text("2026-11-03T11:00 1GB\n2026-11-03T10:00 1GB\n")
    ok(populated, "plan", "add", "Flat", "--unlimited")
    refused(populated, [
        (("simulate", "--plan", PLAN, "--file", str(bad_line)), "not a time: 'yesterday'"),
        (("simulate", "--plan", PLAN, "--file", str(out_of_order)), "scenario steps must be in time order"),
        (("simulate", "--plan", "Flat", "--after-cap", "1GB"), "plan 'Flat' has no CAP: --after-cap does not apply"),
    ])


def _unknown_setting_and_bad_values(populated):
    refused(populated, [
        (("settings", "set", "nope", "yes"), "Error: unknown setting 'nope'; known: admin_topup_description"),
        (("settings", "set", "nope", "-"), "unknown setting 'nope'"),
        (("settings", "get", "nope"), "unknown setting 'nope'"),
        (("settings", "set", "check_balance", "maybe"), "check_balance: not yes/no: 'maybe'"),
        (("settings", "set", "max_topups_per_month", "--", "-1"), "max_topups_per_month: must not be negative"),
        (("settings", "set", "max_topups_per_month", "three"), "max_topups_per_month:"),
        (("settings", "set", "rollover_months", "1.5"), "rollover_months:"),
        (("settings", "set", "limitation_type", "weekly", "--customer", CUSTOMER), "limitation_type:"),
        (("settings", "set", "timezone", "Mars/Olympus", "--service", SERVICE), "unknown time zone 'Mars/Olympus'"),
        (("customer", "add", "bob", "--timezone", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (("customer", "add", "bob", "--partner", "south", "--timezone", "Europe"), "unknown time zone 'Europe'"),
    ])


def _bad_period(populated):
    refused(populated, [
        (("history", SERVICE, "--period", "2026-13"), "Invalid value for --period: '2026-13' is not a month"),
        (("history", SERVICE, "--period", "November"), "write it like 2026-11"),
        (("history", SERVICE, "--period", "2026-11-10"), "is not a month"),
    ])


def test_duplicate_names(populated):
    refused(populated, [
        (("plan", "add", PLAN, "--limit", "1GB"), f"Error: plan '{PLAN}' exists already; change it with: capctl plan edit"),
        (("plan", "edit", "Big 50GB", "--name", PLAN), "that already exists"),
        (("customer", "add", CUSTOMER), f"Error: customer '{CUSTOMER}' exists already"),
        (("service", "add", SERVICE, "--customer", CUSTOMER, "--plan", "Big 50GB"),
         f"Error: service '{SERVICE}' exists already"),
        (("topup-plan", "add", PLAN, "5GB", "--size", "1GB", "--price", "1"),
         f"Error: plan '{PLAN}' has a top-up plan '5GB' already"),
    ])


def _bad_template_syntax(populated):
    refused(populated, [
        (("notification", "add", PLAN, "--source", "monthly", "--threshold", "90", "--body", "Hi {{ customer.name"),
         "Error: template 'Hi {{ customer.name':"),
        (("notification", "add", PLAN, "--source", "monthly", "--threshold", "90", "--subject", "{% if %}",
          "--body", "ok"), "Error: template '{% if %}':"),
    ])


def _broken_topup_description_templates(populated):
    """Regression (cli/settings.py): `settings set auto_topup_description 'Auto {{ size'` was accepted, and then every
    accounting record that triggered an auto top-up failed (its usage was never stored)."""
    refused(populated, [
        (("settings", "set", "auto_topup_description", "Auto {{ size"),
         "Error: auto_topup_description: template 'Auto {{ size':"),
        (("settings", "set", "admin_topup_description", "Top-up {{ size }} for {{ nobody.name }}"),
         "'nobody' is undefined"),
        (("settings", "set", "portal_topup_description", "{{ service.nope }}", "--plan", PLAN), "nope"),
    ])
    ok(populated, "settings", "set", "admin_topup_description",
       "Top-up {{ size }} for {{ service.username }} ({{ customer.name | upper }})")
    ok(populated, "topup", "add", SERVICE, "--size", "1GB", "--price", "1")
    transactions = [t["description"] for t in customer(populated)["transactions"]]
    assert transactions[-1] == "Top-up 1 GB for alice@isp (ALICE)"


def test_a_topup_with_a_template_broken_in_the_database_changes_nothing(populated):
    """A template that cannot render (edited in the database by hand) fails the whole top-up."""
    with connect(populated) as conn:
        store.set_setting(conn, "global", 0, "admin_topup_description", "Top-up {{ size }} for {{ nobody.name }}")
    refused(populated, [(("topup", "add", SERVICE, "--plan", "5GB"), "'nobody' is undefined")])


@pytest.fixture(params=["sqlite", "mariadb"])
def empty_url(request, tmp_path):
    """A database without the rlm_cap tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    base = request.getfixturevalue("mariadb_url").rsplit("/", 1)[0]
    name = f"rlm_cap_test_{os.getpid()}_empty"
    admin = create_engine(base + "/")
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield f"{base}/{name}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def _tables(url: str) -> list[str]:
    engine = store.make_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_database_without_tables_hints_at_db_init(empty_url):
    hint = "Error: the database has no rlm_cap tables yet: run `capctl db init`"
    for args in [("plan", "list"), ("plan", "add", "X", "--limit", "1GB"), ("plan", "show", "X"),
                 ("customer", "add", "bob"), ("customer", "show", "bob"), ("service", "show", "bob@isp"),
                 ("usage", "bob@isp"), ("history", "bob@isp"), ("topup", "add", "bob@isp", "--plan", "5GB"),
                 ("settings", "get"), ("settings", "set", "check_balance", "yes"),
                 ("simulate", "--plan", "X", "--use", "1GB")]:
        assert fails(empty_url, *args, fresh=True) == hint, args
    assert _tables(empty_url) == []

    assert ok(empty_url, "db", "init", fresh=True).startswith("database ready: ")
    assert _tables(empty_url) == sorted(t.name for t in store.metadata.sorted_tables)
    ok(empty_url, "plan", "add", "X", "--limit", "1GB", fresh=True)
    assert ok(empty_url, "db", "init", fresh=True).startswith("database ready: ")  # again: nothing lost
    assert "X" in ok(empty_url, "plan", "list", fresh=True)


def test_db_init_does_not_print_the_password(request):
    url = request.getfixturevalue("mariadb_url")
    out = ok(url, "db", "init", fresh=True)
    assert "rlm_cap_test:***@" in out and ":rlm_cap_test@" not in out


def test_unreachable_database_is_a_one_line_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}"
    message = fails(url, "plan", "list", fresh=True)
    assert message.startswith("Error: database error: ")
