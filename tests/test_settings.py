"""CAP settings: parsing and global → partner → plan → customer → service resolution."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from rlm_cap.settings import PARSERS, SCOPES, Settings, parse_setting, resolve


def test_no_layers_gives_the_defaults():
    s = resolve([])
    assert s == Settings()
    assert s.check_balance is False
    assert s.auto_topup is True
    assert s.use_topup_first is False
    assert s.limitation_type == "all"
    assert s.max_topups_per_month == 0
    assert s.timezone == "UTC"
    assert "{{size}}" in s.auto_topup_description


def test_scopes_are_most_general_first():
    assert SCOPES == ("global", "partner", "plan", "customer", "service")


def test_later_layer_wins():
    layers = [
        {"max_topups_per_month": "1", "check_balance": "yes", "timezone": "UTC"},  # global
        {"max_topups_per_month": "2"},  # partner
        {"max_topups_per_month": "3", "timezone": "Europe/Berlin"},  # plan
        {"max_topups_per_month": "4"},  # customer
        {"max_topups_per_month": "5", "check_balance": "no"},  # service
    ]
    s = resolve(layers)
    assert s.max_topups_per_month == 5
    assert s.check_balance is False
    assert s.timezone == "Europe/Berlin"  # set at plan scope, not overridden later


@pytest.mark.parametrize("depth", range(1, 6))
def test_each_scope_overrides_the_ones_before(depth):
    layers = [{"rollover_months": str(i + 1)} for i in range(depth)]
    layers += [{} for _ in range(5 - depth)]
    assert resolve(layers).rollover_months == depth


def test_unset_layers_fall_through_to_earlier_ones():
    s = resolve([{"use_topup_first": "yes"}, {}, {}, {"auto_topup": "no"}, {}])
    assert s.use_topup_first is True
    assert s.auto_topup is False
    assert s.check_balance is False  # default, nobody set it


def test_none_value_does_not_override():
    assert resolve([{"rollover_months": "6"}, {"rollover_months": None}]).rollover_months == 6


@pytest.mark.parametrize("text, expected", [
    ("yes", True), ("no", False), ("true", True), ("false", False), ("1", True), ("0", False),
    ("YES", True), ("No", False), ("True", True), ("FALSE", False), (" yes ", True),
])
def test_booleans(text, expected):
    assert parse_setting("check_balance", text) is expected
    assert getattr(resolve([{"use_topup_first": text}]), "use_topup_first") is expected


@pytest.mark.parametrize("text", ["", "y", "maybe", "2", "-1", "yess", "t"])
def test_bad_boolean_names_the_setting(text):
    with pytest.raises(ValueError) as error:
        parse_setting("check_balance", text)
    assert str(error.value).startswith("check_balance:")
    assert repr(text) in str(error.value)


@pytest.mark.parametrize("name, text", [
    ("rollover_months", "-1"),
    ("rollover_months", "three"),
    ("rollover_months", "1.5"),
    ("max_topups_per_month", "-3"),
    ("max_topups_per_month", ""),
    ("limitation_type", "some"),
    ("limitation_type", "ALL"),
    ("timezone", "Mars/Olympus"),
    ("portal_topup", "sometimes"),
])
def test_parse_errors_name_the_setting(name, text):
    with pytest.raises(ValueError) as error:
        parse_setting(name, text)
    assert str(error.value).startswith(f"{name}:")


def test_a_broken_value_in_the_database_names_the_setting_on_resolve():
    with pytest.raises(ValueError, match="^max_topups_per_month:"):
        resolve([{"max_topups_per_month": "5"}, {"max_topups_per_month": "lots"}])


def test_a_broken_value_is_reported_even_if_a_later_layer_overrides_it():
    # hand-edited garbage anywhere is an error the operator must see, not hidden by an override
    with pytest.raises(ValueError, match="^check_balance:"):
        resolve([{"check_balance": "perhaps"}, {"check_balance": "yes"}])


@pytest.mark.parametrize("name", ["check_balanse", "colour", "", "Check_Balance"])
def test_unknown_setting_rejected(name):
    with pytest.raises(ValueError) as error:
        parse_setting(name, "yes")
    message = str(error.value)
    assert "unknown setting" in message and repr(name) in message
    assert "check_balance" in message  # lists the known ones


def test_counts():
    assert parse_setting("rollover_months", "3") == 3
    assert parse_setting("max_topups_per_month", "0") == 0
    assert parse_setting("max_topups_per_month", " 12 ") == 12


@pytest.mark.parametrize("value", ["all", "auto", "manual"])
def test_limitation_types(value):
    assert parse_setting("limitation_type", value) == value


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_valid_timezones(zone):
    assert parse_setting("timezone", zone) == zone
    s = resolve([{"timezone": zone}])
    assert s.tz == ZoneInfo(zone)


@pytest.mark.parametrize("zone", ["", "Mars/Olympus", "Europe/Berlinn", "europe/berlin", "Europe",
                                  "../../etc/passwd", "/etc/localtime", "Europe/", "+02:00"])
def test_invalid_timezones(zone):
    with pytest.raises(ValueError) as error:
        parse_setting("timezone", zone)
    message = str(error.value)
    assert message.startswith("timezone:")
    assert "IANA" in message


def test_templates_are_kept_as_text():
    text = "Extra {{size}} for {{service.description}} ({{customer.name}})"
    assert parse_setting("auto_topup_description", text) == text
    assert resolve([{}, {"portal_topup_description": text}]).portal_topup_description == text


def test_every_setting_has_a_parser_and_parses_its_default():
    for name, parser in PARSERS.items():
        default = getattr(Settings(), name)
        text = ("yes" if default else "no") if isinstance(default, bool) else str(default)
        assert parse_setting(name, text) == default
