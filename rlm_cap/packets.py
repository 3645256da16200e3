"""From rlm_python3's attribute tuples to typed accounting records. Pure.

rlm_python3 hands every attribute as a ``(name, value)`` pair of strings, in
packet order, duplicates kept. This module turns them into an
``AccountingRecord`` or raises ``MalformedPacket`` with a message fit for a log
line. It never trusts the NAS's clock unless told to: the time of a record is
the server's receive time minus Acct-Delay-Time.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

from .counters import ACCOUNTING_OFF, ACCOUNTING_ON, INTERIM, START, STOP, AccountingRecord

# "Alive" is RFC 2866's older name of Interim-Update.
STATUS_NAMES = {"Start": START, "Stop": STOP, "Interim-Update": INTERIM, "Alive": INTERIM,
                "Accounting-On": ACCOUNTING_ON, "Accounting-Off": ACCOUNTING_OFF,
                "1": START, "2": STOP, "3": INTERIM, "7": ACCOUNTING_ON, "8": ACCOUNTING_OFF}

# Attribute that the site's preacct section fills with Event-Timestamp as epoch
# seconds (``%{integer:Event-Timestamp}``): the text form must never be parsed.
EVENT_EPOCH = "Tmp-Integer-0"
MAX_DELAY = 7 * 86400  # an Acct-Delay-Time beyond a week is a NAS bug, not a delay
MAX_STRING = 253
# Bytes per direction and session: 9 PB, a 10 Gbit/s line for three months. The
# databases sum sessions into a period's 64-bit columns, so a session total near
# 2^63 would overflow a sum (MariaDB refuses it, SQLite turns it into a float).
MAX_TOTAL = 2**53
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: a later Event-Timestamp is a broken NAS clock


class MalformedPacket(ValueError):
    """The packet cannot be accounted; the message says why."""


class IgnoredPacket(Exception):
    """A well-formed packet that carries no usage (e.g. an unknown Acct-Status-Type)."""


def first_values(attributes) -> dict[str, str]:
    """Each attribute's first value, from whatever rlm_python3 (or a bug) hands over."""
    values: dict[str, str] = {}
    if type(attributes) is tuple:  # rlm_python3's (name, value) pairs: the hot path, kept lean
        for pair in attributes:
            if type(pair) is not tuple or len(pair) != 2:
                return _values_of_anything(attributes)
            name, value = pair
            if type(name) is str and type(value) is str and name not in values:
                values[name] = value
        return values
    return _values_of_anything(attributes)


def _values_of_anything(attributes) -> dict[str, str]:
    values: dict[str, str] = {}
    if isinstance(attributes, (str, bytes, dict)):
        attributes = ()  # not rlm_python3's tuple of pairs: nothing in it is an attribute
    try:
        pairs = iter(attributes or ())
    except TypeError:  # an int, an object: no attributes at all
        pairs = iter(())
    for pair in pairs:
        if isinstance(pair, (tuple, list)) and len(pair) >= 2:
            name, value = pair[0], pair[-1]
            if isinstance(name, str) and isinstance(value, str) and name not in values:
                values[name] = value
    return values


def _number(values: dict[str, str], name: str, bits: int = 64) -> int | None:
    text = values.get(name)
    if text is None or text == "":
        return None
    text = text.strip()
    # isdigit() alone accepts "²" and other Unicode digits, which int() rejects or reads as ASCII.
    if not (text.isascii() and text.isdigit()):
        raise MalformedPacket(f"{name} is not a whole number >= 0: {text[:40]!r}")
    # Check the length first: int() refuses strings of more than 4300 digits with a plain ValueError.
    digits = text.lstrip("0") or "0"
    if len(digits) > 20 or int(digits) >= 2**bits:
        raise MalformedPacket(f"{name} is beyond {bits} bits: {text[:40]!r}")
    return int(digits)


def _string(values: dict[str, str], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if len(value) > MAX_STRING:
        raise MalformedPacket(f"{name} is longer than {MAX_STRING} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: neither the journal nor a database can store it
            raise MalformedPacket(f"{name} is not valid Unicode: {value[:40]!r}") from None
    return value


def _address(values: dict[str, str], name: str) -> str | None:
    """An IP address attribute kept for CoA, or None when it is absent or not an address.

    FreeRADIUS hands ``ipaddr`` attributes over as dotted text; anything else
    cannot identify a session for CoA and would not fit the database's column,
    so it is dropped rather than losing the record's usage.
    """
    value = _string(values, name)
    if not value:
        return None
    valid = _addresses.get(value)
    if valid is None:  # a NAS's and a session's address come back with every interim: parse each once
        try:
            ipaddress.ip_address(value)
            valid = True
        except ValueError:
            valid = False
        if len(_addresses) >= 200_000:
            _addresses.clear()
        _addresses[value] = valid
    return value if valid else None


_addresses: dict[str, bool] = {}


def nas_key(values: dict[str, str]) -> str | None:
    """NAS-IP-Address, else NAS-IPv6-Address, else NAS-Identifier."""
    for name in ("NAS-IP-Address", "NAS-IPv6-Address", "NAS-Identifier"):
        value = _string(values, name)
        if value:
            return value
    return None


def parse_accounting(attributes, received_at: float, trust_event_timestamp: bool = False) -> AccountingRecord:
    """Turn one Accounting-Request into a record; ``received_at`` is epoch seconds."""
    values = first_values(attributes)
    status_text = values.get("Acct-Status-Type")
    if status_text is None:
        raise MalformedPacket("no Acct-Status-Type")
    status = STATUS_NAMES.get(status_text.strip())
    if status is None:
        raise IgnoredPacket(f"Acct-Status-Type {status_text[:40]!r} carries no usage")
    nas = nas_key(values)
    if nas is None:
        raise MalformedPacket("no NAS-IP-Address, NAS-IPv6-Address or NAS-Identifier")

    event = _number(values, EVENT_EPOCH) if trust_event_timestamp else None
    if event is not None and 0 < event <= MAX_EPOCH:
        moment = float(event)
    else:
        delay = min(_number(values, "Acct-Delay-Time") or 0, MAX_DELAY)
        moment = received_at - delay
    at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=moment)

    if status in (ACCOUNTING_ON, ACCOUNTING_OFF):
        return AccountingRecord(status, nas, "", "", at, nas_ip=_address(values, "NAS-IP-Address"))
    username = _string(values, "User-Name")
    if not username:
        raise MalformedPacket("no User-Name")
    session_id = _string(values, "Acct-Session-Id")
    if not session_id:
        raise MalformedPacket("no Acct-Session-Id")
    record = AccountingRecord(
        status, nas, session_id, username, at,
        input_octets=_number(values, "Acct-Input-Octets"),
        input_gigawords=_number(values, "Acct-Input-Gigawords"),
        output_octets=_number(values, "Acct-Output-Octets"),
        output_gigawords=_number(values, "Acct-Output-Gigawords"),
        # a RADIUS integer; beyond 32 bits the database column cannot hold it
        session_time=_number(values, "Acct-Session-Time", bits=32),
        framed_ip=_address(values, "Framed-IP-Address"),
        nas_ip=_address(values, "NAS-IP-Address"))
    # A total the database cannot store (SQLite's INTEGER is signed 64-bit) would fail every retry.
    for direction, total in (("Input", record.input_total), ("Output", record.output_total)):
        if total is not None and total > MAX_TOTAL:
            raise MalformedPacket(f"Acct-{direction}-Gigawords * 2^32 + Acct-{direction}-Octets "
                                  f"is beyond {MAX_TOTAL}")
    return record
