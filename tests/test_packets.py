"""parse_accounting: rlm_python3's attribute tuples → AccountingRecord.

rlm_python3 hands the request as a tuple of ``(name, value)`` strings, in
packet order, duplicates kept (FREERADIUS-NOTES "What the callbacks get and
return"). The parser must never crash on what it gets: a packet is a record,
``MalformedPacket`` (answered, quarantined, logged) or ``IgnoredPacket``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rlm_cap import counters
from rlm_cap.packets import MAX_DELAY, MAX_TOTAL, IgnoredPacket, MalformedPacket, parse_accounting

TRACES = Path("/work/shared/nas-traces")
RECEIVED = datetime(2026, 11, 3, 10, 0, 0, 250000, tzinfo=timezone.utc)  # with microseconds
T = RECEIVED.timestamp()


def request(status="Interim-Update", user="alice@isp", session="s1", nas_ip="192.0.2.1", **counters_):
    """Attributes in the order a MikroTik sends them, as rlm_python3 passes them (all strings)."""
    attrs = []
    if user is not None:
        attrs.append(("User-Name", user))
    if nas_ip is not None:
        attrs.append(("NAS-IP-Address", nas_ip))
    if status is not None:
        attrs.append(("Acct-Status-Type", status))
    if session is not None:
        attrs.append(("Acct-Session-Id", session))
    names = {"in_octets": "Acct-Input-Octets", "in_giga": "Acct-Input-Gigawords",
             "out_octets": "Acct-Output-Octets", "out_giga": "Acct-Output-Gigawords",
             "session_time": "Acct-Session-Time", "delay": "Acct-Delay-Time",
             "framed_ip": "Framed-IP-Address", "event": "Tmp-Integer-0"}
    for key, value in counters_.items():
        attrs.append((names[key], str(value)))
    return tuple(attrs)


def parse(attrs, received_at=T, trust=False):
    return parse_accounting(attrs, received_at, trust)


# --------------------------------------------------------------------------- status types

@pytest.mark.parametrize("text, status", [
    ("Start", counters.START), ("Stop", counters.STOP), ("Interim-Update", counters.INTERIM),
    ("Alive", counters.INTERIM),  # RFC 2866's older name of Interim-Update
    ("1", counters.START), ("2", counters.STOP), ("3", counters.INTERIM),
    (" Stop ", counters.STOP),
])
def test_session_status_types_by_name_and_number(text, status):
    record = parse(request(text))
    assert record.status == status
    assert (record.nas, record.session_id, record.username) == ("192.0.2.1", "s1", "alice@isp")


@pytest.mark.parametrize("text, status", [
    ("Accounting-On", counters.ACCOUNTING_ON), ("Accounting-Off", counters.ACCOUNTING_OFF),
    ("7", counters.ACCOUNTING_ON), ("8", counters.ACCOUNTING_OFF),
])
def test_accounting_on_off_need_no_user_or_session(text, status):
    record = parse((("NAS-IP-Address", "192.0.2.7"), ("Acct-Status-Type", text), ("Acct-Delay-Time", "0")))
    assert record.status == status
    assert (record.nas, record.session_id, record.username) == ("192.0.2.7", "", "")
    assert record.nas_ip == "192.0.2.7"
    assert record.time == RECEIVED


@pytest.mark.parametrize("text", ["Failed", "Tunnel-Start", "15", "9", "interim-update", "Bogus"])
def test_unknown_status_type_is_ignored_not_malformed(text):
    with pytest.raises(IgnoredPacket) as caught:
        parse(request(text))
    assert not isinstance(caught.value, MalformedPacket)
    assert repr(text) in str(caught.value)


# --------------------------------------------------------------------------- NAS key

def test_nas_ip_address_is_preferred_over_ipv6_and_identifier():
    attrs = request(nas_ip=None) + (("NAS-Identifier", "bras-1"), ("NAS-IPv6-Address", "2001:db8::1"),
                                    ("NAS-IP-Address", "192.0.2.9"))
    record = parse(attrs)
    assert record.nas == "192.0.2.9"
    assert record.nas_ip == "192.0.2.9"


def test_nas_ipv6_address_is_preferred_over_identifier():
    attrs = request(nas_ip=None) + (("NAS-Identifier", "bras-1"), ("NAS-IPv6-Address", "2001:db8::1"))
    record = parse(attrs)
    assert record.nas == "2001:db8::1"
    assert record.nas_ip is None


def test_nas_identifier_alone_is_the_key():
    record = parse(request(nas_ip=None) + (("NAS-Identifier", "bras-1"),))
    assert record.nas == "bras-1"
    assert record.nas_ip is None


def test_empty_nas_ip_address_falls_back_to_identifier():
    record = parse(request(nas_ip="") + (("NAS-Identifier", "bras-1"),))
    assert record.nas == "bras-1"


# --------------------------------------------------------------------------- counters

def test_counters_and_gigawords():
    record = parse(request("Interim-Update", in_octets=5, in_giga=2, out_octets=4294967295, out_giga=1,
                           session_time=600, framed_ip="100.64.0.9"))
    assert (record.input_octets, record.input_gigawords) == (5, 2)
    assert (record.output_octets, record.output_gigawords) == (4294967295, 1)
    assert record.input_total == 2 * 2**32 + 5
    assert record.output_total == 2**33 - 1
    assert record.session_time == 600
    assert record.framed_ip == "100.64.0.9"
    assert record.has_counters and record.has_gigawords


def test_missing_gigawords_count_as_zero():
    record = parse(request("Interim-Update", in_octets=1000, out_octets=2000))
    assert record.input_gigawords is None and record.output_gigawords is None
    assert (record.input_total, record.output_total) == (1000, 2000)
    assert not record.has_gigawords


def test_missing_counters_are_none_not_zero():
    record = parse(request("Stop"))
    assert record.input_octets is None and record.output_octets is None
    assert record.input_gigawords is None and record.output_gigawords is None
    assert record.session_time is None and record.framed_ip is None
    assert record.input_total is None and record.output_total is None
    assert not record.has_counters


def test_empty_counter_is_absent_and_surrounding_blanks_are_accepted():
    record = parse(request("Interim-Update") + (("Acct-Input-Octets", ""), ("Acct-Output-Octets", " 42 ")))
    assert record.input_octets is None
    assert record.output_octets == 42


def test_largest_values_are_accepted_and_leading_zeros_are_harmless():
    record = parse(request("Interim-Update", in_octets=MAX_TOTAL, out_octets="0" * 30 + "7",
                           out_giga=2**21 - 1, session_time=2**32 - 1, delay=2**64 - 1))
    assert record.input_total == MAX_TOTAL == 2**53
    assert record.output_total == (2**21 - 1) * 2**32 + 7
    assert record.session_time == 2**32 - 1
    assert record.time == RECEIVED - timedelta(days=7)


# --------------------------------------------------------------------------- time

def test_time_is_receive_time_without_delay():
    record = parse(request("Start"))
    assert record.time == RECEIVED
    assert record.time.tzinfo is not None and record.time.utcoffset() == timedelta(0)


def test_time_is_receive_time_minus_acct_delay_time():
    record = parse(request("Interim-Update", delay=90))
    assert record.time == RECEIVED - timedelta(seconds=90)


@pytest.mark.parametrize("delay", [MAX_DELAY + 1, 30 * 86400, 2**32 - 1])
def test_acct_delay_time_is_capped_at_a_week(delay):
    record = parse(request("Interim-Update", delay=delay))
    assert record.time == RECEIVED - timedelta(days=7)


def test_event_timestamp_epoch_is_ignored_unless_trusted():
    attrs = request("Interim-Update", delay=30, event=1499033939)
    assert parse(attrs).time == RECEIVED - timedelta(seconds=30)
    assert parse(attrs, trust=True).time == datetime(2017, 7, 2, 22, 18, 59, tzinfo=timezone.utc)


def test_event_timestamp_text_is_never_parsed():
    """Only Tmp-Integer-0 (filled in preacct) counts; the locale-dependent text never does."""
    attrs = request("Interim-Update", delay=5) + (("Event-Timestamp", "Jul  2 2017 22:18:59 UTC"),)
    assert parse(attrs, trust=True).time == RECEIVED - timedelta(seconds=5)


@pytest.mark.parametrize("epoch", ["0", "", "300000000000", str(2**63), str(2**64 - 1)])
def test_absent_zero_or_impossible_event_epoch_falls_back_to_receive_time(epoch):
    """A NAS clock beyond any date (year > 9999) must not crash the parser."""
    attrs = request("Interim-Update", delay=10) + (("Tmp-Integer-0", epoch),)
    assert parse(attrs, trust=True).time == RECEIVED - timedelta(seconds=10)


def test_fractional_receive_time_keeps_microseconds():
    record = parse(request("Start"), received_at=1_800_000_000.123456)
    assert record.time == datetime(2027, 1, 15, 8, 0, 0, 123456, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- malformed

LONG = "x" * 254


@pytest.mark.parametrize("attrs, message", [
    (request(status=None), "no Acct-Status-Type"),
    (request(nas_ip=None), "no NAS-IP-Address, NAS-IPv6-Address or NAS-Identifier"),
    (request(nas_ip="") + (("NAS-Identifier", ""),), "no NAS-IP-Address"),
    (request(user=None), "no User-Name"),
    (request(user=""), "no User-Name"),
    (request(session=None), "no Acct-Session-Id"),
    (request(session=""), "no Acct-Session-Id"),
    (request(in_octets="12abc"), "Acct-Input-Octets is not a whole number >= 0: '12abc'"),
    (request(out_octets="-5"), "Acct-Output-Octets is not a whole number >= 0: '-5'"),
    (request(out_octets="1.5"), "Acct-Output-Octets is not a whole number"),
    (request(out_octets="0x10"), "Acct-Output-Octets is not a whole number"),
    (request(out_octets="+7"), "Acct-Output-Octets is not a whole number"),
    (request(in_giga="\u00b2"), "Acct-Input-Gigawords is not a whole number"),  # '²'.isdigit() is True
    (request(in_octets="\u0661\u0662"), "Acct-Input-Octets is not a whole number"),  # Arabic-Indic 12
    (request(session_time="soon"), "Acct-Session-Time is not a whole number"),
    (request(delay="later"), "Acct-Delay-Time is not a whole number"),
    (request(in_octets=2**64), "Acct-Input-Octets is beyond 64 bits"),
    (request(out_giga="9" * 25), "Acct-Output-Gigawords is beyond 64 bits"),
    (request(out_octets="1" * 5000), "Acct-Output-Octets is beyond 64 bits"),  # int() refuses > 4300 digits
    (request(delay="0" * 5000 + "1" * 30), "Acct-Delay-Time is beyond 64 bits"),
    # totals the database cannot store would fail on every retry
    (request(in_octets=2**63), "Acct-Input-Gigawords * 2^32 + Acct-Input-Octets is beyond"),
    (request(out_octets=1, out_giga=2**21), "Acct-Output-Gigawords * 2^32 + Acct-Output-Octets is beyond"),
    (request(out_octets=0, out_giga=2**31), "Acct-Output-Gigawords * 2^32 + Acct-Output-Octets is beyond"),
    (request(out_octets=2**64 - 1, out_giga=2**32 - 1), "Acct-Output-Gigawords * 2^32"),
    (request(session_time=2**32), "Acct-Session-Time is beyond 32 bits"),
    (request(user=LONG), "User-Name is longer than 253 characters"),
    (request(session=LONG), "Acct-Session-Id is longer than 253 characters"),
    (request(nas_ip=LONG), "NAS-IP-Address is longer than 253 characters"),
    (request(nas_ip=None) + (("NAS-Identifier", LONG),), "NAS-Identifier is longer than 253 characters"),
    (request(framed_ip=LONG), "Framed-IP-Address is longer than 253 characters"),
], ids=lambda value: None if isinstance(value, tuple) else value[:40])
def test_malformed_packets_raise_with_a_clear_message(attrs, message):
    with pytest.raises(MalformedPacket) as caught:
        parse(attrs)
    text = str(caught.value)
    assert message in text
    assert len(text) < 150, "the message goes into one log line: the value must be cut short"


def test_253_characters_are_allowed():
    name = "u" * 253
    record = parse(request(user=name, session="s" * 253))
    assert record.username == name and record.session_id == "s" * 253


def test_malformed_event_epoch_is_reported_only_when_trusted():
    attrs = request("Interim-Update", event="yesterday")
    assert parse(attrs).time == RECEIVED
    with pytest.raises(MalformedPacket, match="Tmp-Integer-0 is not a whole number"):
        parse(attrs, trust=True)


# --------------------------------------------------------------------------- shape of the tuple

def test_first_of_duplicate_attributes_wins():
    attrs = request("Interim-Update", out_octets=100) + (("User-Name", "mallory"), ("Acct-Output-Octets", "999"),
                                                         ("Acct-Status-Type", "Stop"))
    record = parse(attrs)
    assert (record.username, record.output_octets, record.status) == ("alice@isp", 100, counters.INTERIM)


@pytest.mark.parametrize("attributes", [None, (), []])
def test_no_attributes_at_all_is_malformed(attributes):
    with pytest.raises(MalformedPacket, match="no Acct-Status-Type"):
        parse_accounting(attributes, T)


def test_garbage_entries_are_skipped_and_valid_pairs_still_count():
    attrs = (None, 5, "User-Name", ("User-Name",), (None, "x"), ("User-Name", None), (3, "4"),
             ("Acct-Output-Octets", 12), b"bytes", {"User-Name": "dict"}) + request(
        "Interim-Update", out_octets=77) + (("Acct-Input-Octets", ":=", "11"),)
    record = parse(attrs)
    assert record.username == "alice@isp"
    assert record.output_octets == 77  # the integer 12 is no rlm_python3 string: skipped
    assert record.input_octets == 11  # (name, op, value) triples: the value is last


@pytest.mark.parametrize("attributes", [
    [["User-Name", "bob"], ["NAS-IP-Address", "192.0.2.1"], ["Acct-Status-Type", "Start"],
     ["Acct-Session-Id", "9"]],  # lists (as JSON gives them) work like tuples
])
def test_lists_are_accepted_as_pairs(attributes):
    assert parse(attributes).username == "bob"


@pytest.mark.parametrize("attributes", [
    ((None, None),), (("Acct-Status-Type",),), ("Acct-Status-Type",), ((1, 2, 3),), ({},),
    (("Acct-Status-Type", None),),
])
def test_garbage_only_is_malformed_not_a_crash(attributes):
    with pytest.raises(MalformedPacket):
        parse(attributes)


def test_unicode_and_mac_user_names_are_kept_byte_exact():
    for name in ("Jürgen@isp", "00-1F-3B-8C-3A-15", "user_7C:C5:37:FF:F8:AF_134", "ALICE@isp"):
        assert parse(request(user=name)).username == name


# --------------------------------------------------------------------------- real NAS traces

def load_traces():
    traces = {}
    for path in sorted(TRACES.glob("*.json")):
        traces[path.name] = json.loads(path.read_text())
    return traces


TRACE_FILES = sorted(p.name for p in TRACES.glob("*.json"))


def packets_of(name):
    return [[tuple(pair) for pair in packet["attributes"]] for packet in load_traces()[name]["packets"]]


def with_preacct_epoch(attrs, epochs):
    """What the site's preacct adds: Tmp-Integer-0 per Event-Timestamp, appended at the end."""
    return attrs + [("Tmp-Integer-0", str(epoch)) for epoch in epochs]


def test_the_traces_are_there():
    assert len(TRACE_FILES) == 5


@pytest.mark.parametrize("name", TRACE_FILES)
@pytest.mark.parametrize("trust", [False, True])
def test_every_trace_packet_parses(name, trust):
    trace = load_traces()[name]
    assert trace["packets"]
    for packet in trace["packets"]:
        attrs = [tuple(pair) for pair in packet["attributes"]]
        if trust:
            attrs = with_preacct_epoch(attrs, packet.get("event_timestamp_epoch", []))
        try:
            record = parse(attrs, trust=trust)
        except MalformedPacket as error:  # allowed only with a reason
            pytest.fail(f"{name}: rejected ({error})")
        values = dict(reversed(attrs))  # first of duplicates
        assert record.status in counters.STATUS_TYPES
        assert record.username == values["User-Name"]
        assert record.session_id == values["Acct-Session-Id"]
        assert record.nas == values["NAS-IP-Address"]  # every trace has one, and it wins
        if trust and packet.get("event_timestamp_epoch"):
            assert record.time.timestamp() == packet["event_timestamp_epoch"][0]
        else:
            assert record.time == RECEIVED - timedelta(seconds=int(values.get("Acct-Delay-Time", 0)))


def test_juniper_pppoe_start_stop_fields():
    start, stop = (parse(p) for p in packets_of("juniper_mx480_pppoe_pcap_start_stop.json"))
    assert start.status == counters.START
    assert (start.nas, start.session_id, start.username) == ("1.1.1.1", "66", "juniper")
    assert start.framed_ip == "203.0.0.12" and start.nas_ip == "1.1.1.1"
    assert not start.has_counters and start.session_time is None

    assert stop.status == counters.STOP
    assert (stop.nas, stop.session_id, stop.username) == ("1.1.1.1", "66", "juniper")
    assert (stop.input_octets, stop.input_gigawords, stop.output_octets, stop.output_gigawords) == (0, 0, 0, 0)
    assert stop.has_counters and stop.has_gigawords  # zero counters are counters, not absent
    assert (stop.input_total, stop.output_total) == (0, 0)
    assert stop.session_time == 11
    assert stop.time == RECEIVED


def test_juniper_dhcp_start_stop_fields():
    start, stop = (parse(p) for p in packets_of("juniper_mx480_dhcp_pcap_start_stop.json"))
    assert start.status == counters.START and not start.has_counters
    assert (start.nas, start.session_id, start.username) == ("1.1.1.1", "47", "ac:16:2d:75:9d:0a")
    assert stop.status == counters.STOP
    # ERX-IPv6-Acct-Input-Octets (0) later in the packet must not be taken for Acct-Input-Octets
    assert (stop.input_total, stop.output_total) == (836, 632)
    assert stop.session_time == 11
    assert stop.framed_ip == "203.0.0.5"


def test_meraki_two_event_timestamps_take_the_first():
    first, retransmit = packets_of("cisco_meraki_mr33_wlan_start_duplicate_event_timestamp.json")
    assert [v for n, v in first if n == "Event-Timestamp"] == [
        "Jul  2 2017 22:18:59 UTC", "Jan  3 2000 13:52:00 UTC"]
    epochs = load_traces()["cisco_meraki_mr33_wlan_start_duplicate_event_timestamp.json"][
        "packets"][0]["event_timestamp_epoch"]
    record = parse(with_preacct_epoch(first, epochs), trust=True)
    assert record.time == datetime(2017, 7, 2, 22, 18, 59, tzinfo=timezone.utc)  # not the bogus 2000 one
    assert (record.username, record.session_id, record.nas) == ("employeealex", "B6DDA455FD1CDCB0", "10.10.0.102")
    assert record.framed_ip == "10.10.0.112"
    # not trusted (the default): the server's clock, whatever the NAS says
    assert parse(first).time == RECEIVED
    # the capture's duplicate frame is the same record
    assert parse(retransmit) == parse(first)


def test_cisco_wlc_and_motorola_starts():
    (wlc,) = (parse(p) for p in packets_of("cisco_wlc4400_wlan_start.json"))
    assert (wlc.status, wlc.nas, wlc.username, wlc.session_id) == (
        counters.START, "10.0.3.4", "user_7C:C5:37:FF:F8:AF_134", "4fecc41e/7c:c5:37:ff:f8:af/9")
    assert wlc.framed_ip == "10.2.0.252" and wlc.time == RECEIVED  # no Acct-Delay-Time
    (moto,) = (parse(p) for p in packets_of("motorola_ap6532_wlan_start.json"))
    assert (moto.status, moto.nas, moto.username, moto.session_id) == (
        counters.START, "10.2.0.3", "00-1F-3B-8C-3A-15", "1970D5A4-001F3B8C3A15-0000000001")
    assert moto.framed_ip is None


# --------------------------------------------------------------------------- hostile values (issue #6)

@pytest.mark.parametrize("attrs, message", [
    (request(user="al\udc80ice"), "User-Name is not valid Unicode: 'al\\udc80ice'"),
    (request(session="\ud800"), "Acct-Session-Id is not valid Unicode"),
    (request(nas_ip="\udfff"), "NAS-IP-Address is not valid Unicode"),
    (request(nas_ip=None) + (("NAS-Identifier", "bras\udc00"),), "NAS-Identifier is not valid Unicode"),
    (request(framed_ip="10.0.0.1\udc80"), "Framed-IP-Address is not valid Unicode"),
])
def test_lone_surrogates_are_malformed(attrs, message):
    """Neither the journal (UTF-8) nor a database driver can store them: refused here, not there."""
    with pytest.raises(MalformedPacket, match="not valid Unicode") as caught:
        parse(attrs)
    assert message in str(caught.value)


@pytest.mark.parametrize("attributes", [5, 3.5, object(), "Acct-Status-Type", b"Acct-Status-Type",
                                        {"Acct-Status-Type": "Start"}, iter(())])
def test_something_that_is_no_tuple_of_pairs_is_malformed(attributes):
    with pytest.raises(MalformedPacket, match="no Acct-Status-Type"):
        parse_accounting(attributes, T)


def test_a_generator_of_pairs_is_read_like_a_tuple():
    assert parse(iter(request("Start"))).username == "alice@isp"


@pytest.mark.parametrize("value, kept", [
    ("100.64.0.9", "100.64.0.9"), ("2001:db8::7", "2001:db8::7"), ("f" * 200, None), ("10.0.0.300", None),
    ("", None), (" 10.0.0.1", None), ("010.0.0.1", None),
])
def test_address_attributes_that_are_no_address_are_dropped_not_the_record(value, kept):
    """They could not identify a session for CoA, and would not fit the 45-character columns."""
    record = parse(request(framed_ip=value, nas_ip=value or None, out_octets=7) + (("NAS-Identifier", "bras-1"),))
    assert record.framed_ip == kept and record.nas_ip == kept
    assert record.output_octets == 7
    assert record.nas == (value or "bras-1")  # the session's key is the text as sent


def test_nul_and_control_characters_are_kept_as_sent():
    record = parse(request(user="a\x00b\x01\x7f\n", session="s\x00"))
    assert (record.username, record.session_id) == ("a\x00b\x01\x7f\n", "s\x00")
