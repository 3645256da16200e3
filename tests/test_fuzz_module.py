"""Hostile and malformed Accounting-/Access-Requests fed to the module, as rlm_python3 would hand them over.

rlm_python3 passes a tuple of ``(name, value)`` strings. Whatever arrives -
missing, duplicated, empty, huge, negative or non-numeric values, lone
surrogates, control characters, NUL, counters of 2^64, unknown enums, or no
tuple at all - the module must answer with one of its result constants, never
raise (FreeRADIUS would fail the packet on every retransmission), write one
clear log line for what it refuses, and leave the journal applicable (no record
it answered OK may later fail to apply). Driven in sync mode (SQLite) and in
journal mode (a journal directory of the test's own); the adapter
(``rlm_cap.freeradius``) is driven through a stand-in ``radiusd`` module.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlm_cap import journal, store
from rlm_cap.module import ERROR, MALFORMED, NOOP, OK, REJECT, UPDATED, Config, Module
from rlm_cap.packets import IgnoredPacket, MalformedPacket, parse_accounting

from .conftest import NOW, make_world
from .test_module import acct, counted, modules  # noqa: F401 - modules: the fixture
from .test_module import wait_for as wait_for_module

T0 = NOW.timestamp()
ACCOUNTING_RESULTS = {OK, MALFORMED}  # with a healthy database: never NOT_DURABLE (endless retransmits)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

NAMES = ["User-Name", "NAS-IP-Address", "NAS-IPv6-Address", "NAS-Identifier", "Acct-Status-Type",
         "Acct-Session-Id", "Acct-Input-Octets", "Acct-Input-Gigawords", "Acct-Output-Octets",
         "Acct-Output-Gigawords", "Acct-Session-Time", "Acct-Delay-Time", "Framed-IP-Address",
         "Tmp-Integer-0", "Event-Timestamp", "User-Password", "NAS-Port", "Class"]
NUMERIC = {"Acct-Input-Octets", "Acct-Input-Gigawords", "Acct-Output-Octets", "Acct-Output-Gigawords",
           "Acct-Session-Time", "Acct-Delay-Time", "Tmp-Integer-0", "NAS-Port"}
STATUS = ["Start", "Stop", "Interim-Update", "Alive", "Accounting-On", "Accounting-Off", "1", "2", "3", "7", "8",
          "Failed", "Tunnel-Start", "15", "0", "-1", "99999999999999999999", "", " ", "start", "Stop\x00",
          "Interim-Update\n"]

surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
control = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), min_size=1, max_size=5)
unicode_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
special = st.sampled_from([
    "", " ", "\x00", "a\x00b", "-1", "-0", "+5", "0x10", "1e3", "1.5", "NaN", "inf", "٣", "²", "12abc",
    str(2**32 - 1), str(2**32), str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64), "9" * 25, "1" * 5000,
    "0" * 300 + "7", " 42 ", "'; DROP TABLE services; --", "alice@isp", "realm\\user", "\"quoted\"", "%s%n%x",
    "\u202eevil", "e\u0301", "\U0001F600", "x" * 253, "x" * 254, "y" * 70000, "192.0.2.1", "::1", "999.1.1.1",
])
numbers = st.integers(min_value=-2**70, max_value=2**70).map(str)
value = st.one_of(special, numbers, unicode_text, surrogates, control,
                  st.builds(lambda a, b: a + b, unicode_text, surrogates))


@st.composite
def pairs(draw):
    name = draw(st.one_of(st.sampled_from(NAMES), unicode_text))
    if name == "Acct-Status-Type":
        text = draw(st.one_of(st.sampled_from(STATUS), value))
    elif name in NUMERIC:
        text = draw(st.one_of(numbers, special, value))
    else:
        text = draw(value)
    return (name, text)


def valid_packet(draw) -> list:
    """A packet that would be accepted, to mutate from."""
    status = draw(st.sampled_from(["Start", "Interim-Update", "Stop", "Accounting-On"]))
    packet = [("User-Name", draw(st.sampled_from(["alice@isp", "stranger", "bob@isp"]))),
              ("NAS-IP-Address", "192.0.2.1"), ("Acct-Status-Type", status),
              ("Acct-Session-Id", draw(st.sampled_from(["s1", "s2", "s3"])))]
    for name in ("Acct-Input-Octets", "Acct-Output-Octets", "Acct-Session-Time"):
        if draw(st.booleans()):
            packet.append((name, str(draw(st.integers(0, 2**32 - 1)))))
    return packet


junk_entry = st.one_of(st.none(), st.integers(), st.binary(max_size=8), unicode_text,
                       st.tuples(st.sampled_from(NAMES)), st.tuples(st.none(), value),
                       st.tuples(st.sampled_from(NAMES), st.integers()),
                       st.tuples(st.sampled_from(NAMES), st.just(":="), value),
                       st.lists(value, max_size=3), st.dictionaries(st.sampled_from(NAMES), value, max_size=2))


@st.composite
def requests(draw):
    """A request tuple: a valid packet mutated (values replaced, dropped, duplicated, junk inserted),
    random pairs, or something that is not a tuple of pairs at all."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random", "junk"]))
    if kind == "junk":
        return draw(st.one_of(st.none(), st.integers(), st.floats(), unicode_text, st.binary(max_size=20),
                              st.dictionaries(unicode_text, value, max_size=3), st.lists(junk_entry, max_size=5),
                              st.just(object())))
    if kind == "random":
        return tuple(draw(st.lists(st.one_of(pairs(), junk_entry), max_size=12)))
    packet = valid_packet(draw)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["replace", "drop", "duplicate", "insert", "junk"]))
        index = draw(st.integers(0, max(len(packet) - 1, 0)))
        is_pair = index < len(packet) and isinstance(packet[index], tuple) and len(packet[index]) == 2 \
            and isinstance(packet[index][0], str)
        if action == "replace" and is_pair:
            name = packet[index][0]
            packet[index] = (name, draw(st.sampled_from(STATUS) if name == "Acct-Status-Type" else value))
        elif action == "drop" and packet:
            packet.pop(index)
        elif action == "duplicate" and is_pair:
            packet.insert(index, (packet[index][0], draw(value)))
        elif action == "insert":
            packet.insert(index, draw(pairs()))
        else:
            packet.insert(index, draw(junk_entry))
    return tuple(packet)


# --------------------------------------------------------------------------- modules

def expected_result(attributes) -> tuple[str, str | None]:
    """What the module must answer, by the parser (the oracle), and why for a malformed one."""
    try:
        parse_accounting(attributes, T0)
    except IgnoredPacket:
        return OK, None
    except MalformedPacket as error:
        return MALFORMED, str(error)
    return OK, None


@pytest.fixture(scope="module", params=["sync", "journal"])
def fuzzed(request, tmp_path_factory):
    """A started Module on SQLite with the world's plan and alice@isp, in each mode."""
    base = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url = f"sqlite:///{base / 'db.sqlite3'}"
    engine = store.make_engine(url)
    store.create_schema(engine)
    make_world(engine)
    engine.dispose()
    logs: list[tuple[str, str]] = []
    module = Module(Config(db_url=url, mode=request.param, journal_dir=str(base / "journal"), node="fuzz",
                           apply_interval=0.01, state_refresh=0.05, drain_timeout=30),
                    lambda level, message: logs.append((level, message)))
    module.logs = logs
    module.start()
    yield module
    module.stop()


def caught_up(module) -> bool:
    generation = module.writer.generation
    return module.applied == (generation, journal.file_size(Path(module.config.journal_dir), generation))


@FUZZ
@given(attributes=requests(), delay=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_accounting_answers_every_request_with_a_defined_result(fuzzed, attributes, delay):
    before = len(fuzzed.logs)
    result = fuzzed.accounting(attributes, T0 + delay)
    expected, reason = expected_result(attributes)
    event(f"{result}: {reason.split(':')[0] if reason else 'record or ignored'}")
    assert result in ACCOUNTING_RESULTS
    assert result == expected, (attributes, reason)
    new = fuzzed.logs[before:]
    if result == MALFORMED:
        errors = [m for level, m in new if level == ERROR and "malformed Accounting-Request" in m]
        assert len(errors) == 1, new
        assert reason in errors[0]
        assert "\n" not in errors[0] and len(errors[0]) < 300, "one short line, whatever the packet held"
    else:
        assert not [m for level, m in new if level == ERROR and "rlm_cap-applier" not in m
                    and "journal" not in m], new


def test_every_record_answered_ok_was_applied_without_error(fuzzed):
    """Runs after the fuzzing above (same module instance): hostile values the parser let through
    must be storable, or journal mode would lose the usage of an answered record."""
    if fuzzed.writer is not None:
        deadline = time.monotonic() + 30
        while not caught_up(fuzzed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert caught_up(fuzzed)
    failures = [m for level, m in fuzzed.logs if level == ERROR and "malformed Accounting-Request" not in m]
    assert failures == []


AUTHORIZE_RESULTS = {NOOP, UPDATED, REJECT}
login_pairs = st.lists(st.one_of(pairs(), st.tuples(st.just("User-Name"), value),
                                 st.just(("User-Name", "alice@isp"))), max_size=8).map(tuple)


@FUZZ
@given(attributes=login_pairs)
def test_authorize_answers_any_pairs_with_a_defined_result(fuzzed, attributes):
    result, reply = fuzzed.authorize(attributes)
    assert result in AUTHORIZE_RESULTS
    assert isinstance(reply, tuple)
    assert all(isinstance(name, str) and isinstance(text, str) for name, text in reply)


@pytest.mark.parametrize("attributes", [5, "User-Name", b"alice", {"User-Name": "alice@isp"},
                                        (("User-Name", ":=", "alice@isp"),), (("User-Name",),), (None,),
                                        iter([("User-Name", "alice@isp")])])
def test_authorize_of_junk_is_a_defined_result(attributes):
    module = Module(Config(db_url="sqlite://"), lambda level, message: None)  # authorize needs no database
    result, reply = module.authorize(attributes)
    assert result in AUTHORIZE_RESULTS and isinstance(reply, tuple)


@pytest.mark.parametrize("attributes, reason", [
    ((("User-Name", "a\udc80b"), ("NAS-IP-Address", "192.0.2.1"), ("Acct-Status-Type", "Start"),
      ("Acct-Session-Id", "s1")), "User-Name is not valid Unicode"),
    ((("User-Name", "alice@isp"), ("NAS-Identifier", "\ud800nas"), ("Acct-Status-Type", "Stop"),
      ("Acct-Session-Id", "s1")), "NAS-Identifier is not valid Unicode"),
    ((("NAS-IP-Address", "\udfff"), ("Acct-Status-Type", "Accounting-On")), "NAS-IP-Address is not valid Unicode"),
    (5, "no Acct-Status-Type"),
    (object(), "no Acct-Status-Type"),
    ("Acct-Status-Type", "no Acct-Status-Type"),
])
def test_values_no_journal_or_database_can_hold_are_malformed(fuzzed, attributes, reason):
    """Regression: a lone surrogate reached the journal's UTF-8 encoder (journal mode) or the
    database driver (sync mode) and raised out of accounting(); a non-iterable request raised
    TypeError."""
    assert fuzzed.accounting(attributes, T0) == MALFORMED
    assert reason in fuzzed.logs[-1][1]


# --------------------------------------------------------------------------- the adapter inside FreeRADIUS

class FakeRadiusd(types.ModuleType):
    """What rlm_python3 provides as ``radiusd``: log levels, result codes, radlog and config."""

    L_DBG, L_AUTH, L_INFO, L_ERR, L_WARN = 1, 2, 3, 4, 5
    RLM_MODULE_REJECT, RLM_MODULE_FAIL, RLM_MODULE_OK, RLM_MODULE_HANDLED = 0, 1, 2, 3
    RLM_MODULE_INVALID, RLM_MODULE_USERLOCK, RLM_MODULE_NOTFOUND, RLM_MODULE_NOOP, RLM_MODULE_UPDATED = 4, 5, 6, 7, 8

    def __init__(self, config):
        super().__init__("radiusd")
        self.config = config
        self.logged: list[tuple[int, str]] = []

    def radlog(self, level, message):
        assert isinstance(message, str)
        self.logged.append((level, message))


@pytest.fixture
def adapter(monkeypatch, tmp_path):
    """``adapter(db_url, **config)``: rlm_cap.freeradius imported against a stand-in radiusd, instantiated."""
    loaded = []

    def load(db_url, **config):
        fake = FakeRadiusd({"db_url": db_url, "journal_dir": str(tmp_path / "journal"), "node": "adapter",
                            "state_refresh": "0.05", "apply_interval": "0.01", "drain_timeout": "5", **config})
        monkeypatch.setitem(sys.modules, "radiusd", fake)
        sys.modules.pop("rlm_cap.freeradius", None)
        module = importlib.import_module("rlm_cap.freeradius")
        assert module.instantiate(None) == 0, fake.logged
        loaded.append(module)
        return module, fake

    yield load
    for module in loaded:
        module.detach()
    sys.modules.pop("rlm_cap.freeradius", None)


@pytest.mark.parametrize("mode", ["sync", "journal"])
def test_adapter_never_raises_and_answers_with_radiusd_codes(adapter, tmp_path, mode):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = store.make_engine(url)
    store.create_schema(engine)
    make_world(engine)
    engine.dispose()
    freeradius, radiusd = adapter(url, mode=mode)
    junk = [None, 5, "x", b"\xff", {"a": 1}, object(), ((None, None),), (("User-Name", "a\udc80"),),
            (("User-Name", "alice@isp"), ("NAS-IP-Address", "192.0.2.1"), ("Acct-Status-Type", "Start"),
             ("Acct-Session-Id", "\x00")), (("Acct-Status-Type", "Interim-Update"),)]
    codes = {radiusd.RLM_MODULE_OK, radiusd.RLM_MODULE_FAIL}
    for attributes in junk:
        assert freeradius.accounting(attributes) in codes
        answer = freeradius.authorize(attributes)
        assert answer == radiusd.RLM_MODULE_NOOP or (
            isinstance(answer, tuple) and answer[0] in (radiusd.RLM_MODULE_NOOP, radiusd.RLM_MODULE_UPDATED,
                                                        radiusd.RLM_MODULE_REJECT))
    ok = (("User-Name", "alice@isp"), ("NAS-IP-Address", "192.0.2.1"), ("Acct-Status-Type", "Interim-Update"),
          ("Acct-Session-Id", "ok1"), ("Acct-Output-Octets", "100"))
    assert freeradius.accounting(ok) == radiusd.RLM_MODULE_OK


def test_adapter_turns_an_unexpected_error_into_fail_with_a_log_line(adapter, tmp_path, monkeypatch):
    """A bug in the module must not fail the packet on every retransmission: 'fail' lets the
    site's guard quarantine it and answer, with one log line (and no password in it)."""
    password = "Zq-adapter-pw-77"
    freeradius, radiusd = adapter(f"mysql+pymysql://rlm_cap_test:{password}@127.0.0.1:1/x", mode="journal")

    def broken(attributes, received_at):
        raise RuntimeError(f"bug while handling a packet (connecting with {password})")

    monkeypatch.setattr(freeradius._module, "accounting", broken)
    assert freeradius.accounting((("Acct-Status-Type", "Start"),)) == radiusd.RLM_MODULE_FAIL
    failures = [m for level, m in radiusd.logged if "accounting failed" in m]
    assert len(failures) == 1 and "RuntimeError" in failures[0] and "quarantined" in failures[0]
    assert not any(password in m for _, m in radiusd.logged)


# --------------------------------------------------------------------------- optional attributes that are garbage

@pytest.mark.parametrize("mode", ["sync", "journal"])
def test_garbage_in_optional_address_attributes_does_not_cost_the_usage(db_url, engine, world, modules, mode):
    """Regression: a Framed-IP-Address (or NAS-IP-Address) that is no address but fits RADIUS's
    253 octets did not fit the 45-character columns: MariaDB refused the record, so sync mode
    quarantined it and journal mode skipped it - its bytes were lost. Such a value is dropped
    (it could not identify a session for CoA anyway) and the usage counts."""
    module = modules(db_url, mode=mode)
    packets = [
        acct("Interim-Update", "g1", down=1000, up=0, session_time=60, Framed_IP_Address="f" * 200),
        acct("Interim-Update", "g2", nas="n" * 100, down=20, up=0, session_time=60),
        acct("Interim-Update", "g3", down=3, up=0, session_time=60, Framed_IP_Address="10.0.0.300"),
        acct("Interim-Update", "g4", down=400, up=0, session_time=60, Framed_IP_Address="100.64.0.9"),
    ]
    assert [module.accounting(p, T0 + i) for i, p in enumerate(packets)] == [OK] * 4
    if mode == "journal":
        assert wait_for_module(lambda: caught_up(module))
    assert counted(engine, world["service_id"]) == 1423
    with engine.connect() as conn:
        rows = {s["acct_session_id"]: s for s in store.session_rows(conn, "alice@isp")}
        conn.rollback()
    assert (rows["g1"]["framed_ip"], rows["g3"]["framed_ip"], rows["g4"]["framed_ip"]) == (None, None, "100.64.0.9")
    assert rows["g2"]["nas"] == "n" * 100 and rows["g2"]["nas_ip"] is None
    assert not [m for level, m in module.logs if level == ERROR]
