"""Sizes in integer bytes and how operators write them.

Decimal units (kB, MB, GB, TB, PB) are powers of 1000, as ISPs sell them and as
RouterOS counts rates; binary units (KiB, MiB, GiB, TiB, PiB) are powers of 1024.
``K``/``M``/``G``/``T`` without ``B`` are read as decimal too. A fraction is
allowed in the text (``1.5GB``) but the result is always a whole number of bytes,
computed with ``Decimal`` so no float rounding ever reaches a stored size.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

DECIMAL_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6,
                 "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12, "P": 10**15, "PB": 10**15}
BINARY_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}
UNITS = {**DECIMAL_UNITS, **BINARY_UNITS}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """``'500MB'`` → 500_000_000, ``'1.5TiB'`` → 1_649_267_441_664, ``'0'`` → 0.

    Raises ``ValueError`` with a message an operator can act on.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        if str(text).strip().startswith("-"):
            raise ValueError(f"size must not be negative: {text!r}")
        raise ValueError(f"not a size: {text!r} (write it like 500MB, 10GB or 1.5TiB)")
    number, unit = match.groups()
    factor = UNITS.get(unit.upper())
    if factor is None:
        raise ValueError(
            f"unknown unit {unit!r} in {text!r}: use B, kB, MB, GB, TB, PB (x1000) "
            "or KiB, MiB, GiB, TiB, PiB (x1024)")
    try:
        value = Decimal(number) * factor
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        raise ValueError(f"not a size: {text!r}") from None
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def format_size(size: int, binary: bool = False) -> str:
    """1_500_000_000 → ``'1.5 GB'``; exact values print without decimals (``'10 GB'``)."""
    sign = "-" if size < 0 else ""
    size = abs(size)
    steps = (["B", 1], ["KiB", 2**10], ["MiB", 2**20], ["GiB", 2**30], ["TiB", 2**40], ["PiB", 2**50]) \
        if binary else (["B", 1], ["kB", 10**3], ["MB", 10**6], ["GB", 10**9], ["TB", 10**12], ["PB", 10**15])
    name, factor = steps[0]
    for step_name, step_factor in steps:
        if size >= step_factor:
            name, factor = step_name, step_factor
    value = (Decimal(size) / factor).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP).normalize()
    text = format(value, "f")
    return f"{sign}{text} {name}"


def parse_money(text: str | Decimal) -> Decimal:
    """``'10'`` → Decimal('10.00'); money never goes through float."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {text!r} (write it like 10 or 9.99)") from None
    if not value.is_finite():
        raise ValueError(f"not an amount of money: {text!r}")
    try:
        return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:  # more digits than the decimal context holds
        raise ValueError(f"not an amount of money: {text!r} (too large)") from None
