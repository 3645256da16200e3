"""Sizes and money as operators write them (rlm_cap.units)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_cap.units import format_size, parse_money, parse_size

KB, MB, GB, TB, PB = 10**3, 10**6, 10**9, 10**12, 10**15
KIB, MIB, GIB, TIB, PIB = 2**10, 2**20, 2**30, 2**40, 2**50


# --------------------------------------------------------------------------- parse_size

@pytest.mark.parametrize("text, expected", [
    ("500MB", 500 * MB),
    ("10GB", 10 * GB),
    ("1TB", TB),
    ("2PB", 2 * PB),
    ("1kB", KB),
    ("7", 7),
    ("7B", 7),
    ("0", 0),
    ("0GB", 0),
    ("3K", 3 * KB),  # K/M/G/T without B are decimal, like RouterOS rates
    ("3M", 3 * MB),
    ("3G", 3 * GB),
    ("3T", 3 * TB),
    ("1KiB", 1024),
    ("5MiB", 5 * 1024**2),
    ("2GiB", 2 * 1024**3),
    ("1PiB", 1024**5),
])
def test_parse_size_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


def test_decimal_and_binary_units_differ():
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("1GiB") == 1_073_741_824
    assert parse_size("1GiB") - parse_size("1GB") == 73_741_824


@pytest.mark.parametrize("text", ["500mb", "500MB", "500Mb", "500mB"])
def test_units_are_case_insensitive(text):
    assert parse_size(text) == 500_000_000


@pytest.mark.parametrize("text", ["1.5tib", "1.5TIB", "1.5TiB", "1.5 TiB"])
def test_binary_units_are_case_insensitive(text):
    assert parse_size(text) == 1_649_267_441_664  # 1.5 * 2**40 = 3 * 2**39


def test_whitespace_around_and_between_number_and_unit():
    assert parse_size("  10 GB ") == 10 * GB
    assert parse_size("10\tGB") == 10 * GB


def test_fractions_are_exact_never_float():
    # 1.5 TiB = 3 * 2**39; through a float of bytes this is still exact, so take
    # values where float arithmetic would visibly go wrong as well.
    assert parse_size("1.5TiB") == 3 * 2**39
    assert isinstance(parse_size("1.5TiB"), int)
    assert parse_size("0.1GB") == 100_000_000
    assert parse_size("1.1TB") == 1_100_000_000_000
    # 4.35 * 10**15 as float is 4349999999999999.5
    assert parse_size("4.35PB") == 4_350_000_000_000_000
    # 1e-15 PiB is 1.1259 bytes: the fraction survives and rounds to one byte
    assert parse_size("1.000000000000001PiB") == 2**50 + 1
    assert parse_size("9007199254740993") == 2**53 + 1  # not representable as a float


def test_fraction_of_a_byte_rounds_half_up():
    assert parse_size("0.5B") == 1
    assert parse_size("0.4B") == 0
    assert parse_size("1.0005kB") == 1001  # 1000.5 bytes → 1001


def test_int_input_is_bytes():
    assert parse_size(0) == 0
    assert parse_size(12345) == 12345
    assert parse_size(2**64 - 1) == 2**64 - 1


def test_bool_is_not_a_size():
    with pytest.raises(ValueError):
        parse_size(True)


@pytest.mark.parametrize("text", ["-1", "-5GB", " -0.5 MB", "-1TiB"])
def test_negative_sizes_are_refused_with_a_clear_message(text):
    with pytest.raises(ValueError, match="negative"):
        parse_size(text)


def test_negative_int_is_refused():
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@pytest.mark.parametrize("text", ["", "   ", "GB", "abc", "1.5.5GB", "1,5GB", "1e3", "5 G B",
                                  "1.", "ten GB", "10GB extra", "0x10"])
def test_malformed_sizes_say_how_to_write_one(text):
    with pytest.raises(ValueError) as error:
        parse_size(text)
    message = str(error.value)
    assert repr(text) in message  # names what was wrong
    assert "GB" in message  # and shows how to write it


@pytest.mark.parametrize("text", ["10XB", "10 bytes", "10GBs", "10Gi", "5mbit"])
def test_unknown_units_list_the_known_ones(text):
    with pytest.raises(ValueError) as error:
        parse_size(text)
    message = str(error.value)
    assert "unknown unit" in message
    assert "GiB" in message and "GB" in message


# --------------------------------------------------------------------------- format_size

@pytest.mark.parametrize("size, expected", [
    (0, "0 B"),
    (1, "1 B"),
    (999, "999 B"),
    (1000, "1 kB"),
    (1500, "1.5 kB"),
    (500 * MB, "500 MB"),
    (10 * GB, "10 GB"),
    (1_500_000_000, "1.5 GB"),
    (1_234_567_890, "1.23 GB"),
    (1_235_000_000, "1.24 GB"),  # half up
    (TB, "1 TB"),
    (3 * PB, "3 PB"),
    (5000 * PB, "5000 PB"),  # no unit above PB
])
def test_format_size_decimal(size, expected):
    assert format_size(size) == expected


@pytest.mark.parametrize("size, expected", [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1 KiB"),
    (1536, "1.5 KiB"),
    (3 * 2**39, "1.5 TiB"),
    (10 * GIB, "10 GiB"),
    (1000, "1000 B"),
])
def test_format_size_binary(size, expected):
    assert format_size(size, binary=True) == expected


def test_format_size_negative_keeps_sign():
    # Used for over-use corrections in history lines.
    assert format_size(-1_500_000_000) == "-1.5 GB"
    assert format_size(-1024, binary=True) == "-1 KiB"


def test_exact_values_print_without_decimals_or_exponent():
    for size in (10 * GB, 100 * GB, 1000 * GB, 20 * TB):
        text = format_size(size)
        assert "." not in text and "E" not in text


# --------------------------------------------------------------------------- round trip

@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=999),
       st.sampled_from([1, KB, MB, GB, TB, PB]),
       st.integers(min_value=0, max_value=99))
def test_round_trip_exact_decimal_values(whole, factor, cents):
    """A size with at most two decimals in its own unit survives format → parse exactly."""
    size = whole * factor + (cents * factor // 100 if factor > 1 else 0)
    assert parse_size(format_size(size)) == size


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1023),
       st.sampled_from([KIB, MIB, GIB, TIB, PIB]),
       st.integers(min_value=0, max_value=3))
def test_round_trip_exact_binary_values(whole, factor, quarters):
    """Whole and quarter binary units (x.25, x.5, x.75) survive format → parse exactly."""
    size = whole * factor + quarters * factor // 4
    assert parse_size(format_size(size, binary=True)) == size


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
def test_round_trip_any_size_within_rounding(size, binary):
    """format prints two decimals of the chosen unit; parse gets back within half a unit step."""
    text = format_size(size, binary=binary)
    back = parse_size(text)
    unit = text.split()[1]
    factor = parse_size("1" + unit)
    # two decimals of the unit (0.005 unit) plus parse's rounding to a whole byte
    assert abs(back - size) <= Fraction(factor, 200) + Fraction(1, 2)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_int_and_its_string_agree(size):
    assert parse_size(str(size)) == parse_size(size) == size


# --------------------------------------------------------------------------- money

@pytest.mark.parametrize("text, expected", [
    ("10", Decimal("10.00")),
    ("9.99", Decimal("9.99")),
    (" 9.99 ", Decimal("9.99")),
    ("0", Decimal("0.00")),
    ("0.005", Decimal("0.01")),  # half up, to the cent
    ("0.004", Decimal("0.00")),
    ("1.115", Decimal("1.12")),  # a float would make this 1.1149999... → 1.11
    (Decimal("15"), Decimal("15.00")),
])
def test_parse_money(text, expected):
    value = parse_money(text)
    assert isinstance(value, Decimal)
    assert value == expected
    assert value.as_tuple().exponent == -2  # always to the cent


@pytest.mark.parametrize("text", ["", "abc", "10 EUR", "1,50", "NaN", "Infinity", "-inf", "sNaN"])
def test_malformed_money_is_a_value_error(text):
    with pytest.raises(ValueError, match="not an amount of money"):
        parse_money(text)


@pytest.mark.parametrize("text", ["1e30", "99999999999999999999999999999"])
def test_absurd_money_is_a_value_error_not_a_decimal_trap(text):
    # capctl turns ValueError into a one-line error; decimal.InvalidOperation is
    # not a ValueError and would end in a traceback.
    with pytest.raises(ValueError, match="money"):
        parse_money(text)
