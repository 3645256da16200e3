"""Hostile User-Names: quotes, backslashes, %, SQL, realms, Unicode - stored exactly, found exactly.

The service's name is the RADIUS User-Name the NAS sends, compared byte for
byte. These names go through the ledger on SQLite and MariaDB, through
``capctl``, and through real FreeRADIUS (rlm_python3 hands the value over
unescaped, and the module must not add or lose anything on the way). Nothing
here may inject SQL: every table is still there afterwards, with the rows it
should have.
"""

from __future__ import annotations

import unicodedata
from datetime import timedelta

import pytest
from pyrad import packet as radius_packet
from sqlalchemy import func, inspect, select

from cli.lab import Nas, wait_for
from rlm_cap import counters, ledger, store
from rlm_cap.counters import AccountingRecord

from .cli_helpers import fails, ok, ok_json
from .conftest import GB, NOW

HOSTILE = [
    "O'Brien@isp", 'O"Brien@isp', "back\\slash@isp", "two\\\\backslashes", "trailing\\", "100%@isp", "%%", "_%",
    "%{User-Password}", "${confdir}", "'; DROP TABLE services; --", "x' OR '1'='1", "Robert\"); DROP TABLE customers;--",
    "user@realm", "realm\\user", "REALM/user", "user@sub.realm@other", "\U0001F600@isp", "\U0001F469\u200D\U0001F4BB",
    "\u202Eevil.exe", "مستخدم@isp", "e\u0301@isp", "\u00e9@isp", "ALICE@isp", "tab\there", "line\nbreak",
    "ctl\x01\x7f", "a\x00b", " lead@isp", "\u00a0nbsp", "x" * 253,
]


def record(user: str, session: str, down: int) -> AccountingRecord:
    return AccountingRecord(counters.INTERIM, "192.0.2.1", session, user, NOW + timedelta(minutes=1),
                            input_octets=0, output_octets=down, session_time=60)


def every_table(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in store.metadata.sorted_tables}


def test_the_names_are_distinct_and_include_look_alikes():
    assert len(set(HOSTILE)) == len(HOSTILE)
    # NFD and NFC spellings of é look alike and are two different User-Names
    assert unicodedata.normalize("NFC", "e\u0301@isp") == "\u00e9@isp"


def test_hostile_names_through_the_ledger_are_stored_and_found_exactly(engine, world):
    """Every name is its own service; each gets only its own bytes; alice@isp gets none of them."""
    with engine.begin() as conn:
        ids = {name: store.add_service(conn, world["customer_id"], world["plan_id"], name, "hostile", NOW, "ok")
               for name in HOSTILE}
    tables_before = set(inspect(engine).get_table_names())
    for number, name in enumerate(HOSTILE):
        with engine.begin() as conn:
            applied = ledger.apply_record(conn, record(name, f"s{number}", 1000 + number))
        assert applied.service_id == ids[name], name
    with engine.begin() as conn:
        for number, name in enumerate(HOSTILE):
            found = store.find_service(conn, name)
            assert found is not None and found["id"] == ids[name] and found["username"] == name, name
            [session] = store.session_rows(conn, name)
            assert session["username"] == name and session["output_total"] == 1000 + number
            ctx = ledger.load_context(conn, found)
            period = store.find_period(conn, ids[name], ctx.period(NOW).start)
            assert period["counted_bytes"] == 1000 + number, name
        assert store.session_rows(conn, "alice@isp") == []
        assert store.find_service(conn, "alice@isp")["id"] == world["service_id"]
        # no look-alike is found for a name that was not added
        for stranger in ("o'brien@isp", "e@isp", "user@REALM", "realm\\\\user", "100@isp", "%"):
            assert store.find_service(conn, stranger) is None, stranger
    assert set(inspect(engine).get_table_names()) == tables_before == {t.name for t in store.metadata.sorted_tables}
    counts = every_table(engine)
    assert counts["services"] == len(HOSTILE) + 1 and counts["sessions"] == len(HOSTILE)


def test_trailing_blank_is_another_user_name(engine, world, db_url):
    """'alice@isp ' is not alice@isp: its bytes must not count against her."""
    assert fails(db_url, "usage", "alice@isp ").startswith("Error: no service 'alice@isp '")
    with engine.begin() as conn:
        applied = ledger.apply_record(conn, record("alice@isp ", "t1", 5000))
        assert applied.service_id is None
        assert store.find_service(conn, "alice@isp ") is None
        assert store.session_rows(conn, "alice@isp") == []
        store.add_service(conn, world["customer_id"], world["plan_id"], "alice@isp ", "blank", NOW, "ok")


CLI_NAMES = ["'; DROP TABLE services; --", "O'Brien\\\"x@isp", "100%@isp", "realm\\user", "\U0001F600 e\u0301",
             "\u202Eevil", "${confdir}%{User-Name}"]


def test_hostile_names_through_capctl(db_url):
    ok(db_url, "plan", "add", "P", "--limit", "10GB")
    for name in CLI_NAMES:
        ok(db_url, "customer", "add", name)
        ok(db_url, "service", "add", name, "--customer", name, "--plan", "P", "--description", name)
        ok(db_url, "topup", "add", name, "--size", "1GB", "--price", "0")
    for name in CLI_NAMES:
        shown = ok_json(db_url, "service", "show", name)
        assert shown["username"] == name and shown["customer"] == name and shown["description"] == name
        assert [b["size"] for b in ok_json(db_url, "usage", name)["buckets"] if b["kind"] == "topup"] == [GB]
        assert fails(db_url, "service", "add", name, "--customer", name, "--plan", "P") == \
            f"Error: service {name!r} exists already"
    assert "no service" in fails(db_url, "usage", "'; DROP TABLE services; -")
    assert "no service" in fails(db_url, "usage", "realm\\\\user")
    engine = store.make_engine(db_url)
    try:
        counts = every_table(engine)
        assert set(inspect(engine).get_table_names()) == {t.name for t in store.metadata.sorted_tables}
    finally:
        engine.dispose()
    assert counts["services"] == counts["customers"] == len(CLI_NAMES)


E2E_NAMES = ["'; DROP TABLE services; --", 'O"Brien\\x@isp', "realm\\user", "user@realm", "100%{User-Name}",
             "\U0001F600@isp", "\u202Eevil", "e\u0301@isp", "\u00e9@isp", "tab\tx"]


@pytest.mark.parametrize("mode", ["sync", "journal"])
def test_hostile_names_through_freeradius(radius, engine, world, mode):
    """rlm_python3 hands the User-Name over unescaped: each service gets exactly its own bytes,
    and a capped one with a hostile name is refused at login."""
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], action="block")
        store.set_time_frames(conn, world["plan_id"], [])
        ids = {name: store.add_service(conn, world["customer_id"], world["plan_id"], name, "e2e", NOW, "ok")
               for name in E2E_NAMES}
    server = radius(mode)
    nas = Nas(server)
    for number, name in enumerate(E2E_NAMES):
        assert nas.accounting("Interim-Update", f"e{number}", name, down=1000 + number, up=0, session_time=30)
    capped = E2E_NAMES[0]
    assert nas.accounting("Interim-Update", "cap", capped, down=11 * GB, up=0, session_time=30)

    def usage(conn, name):
        return sum(r["download_bytes"] for r in store.list_periods(conn, ids[name]))

    def all_counted():
        with engine.begin() as conn:
            return all(usage(conn, n) == 1000 + i + (11 * GB if n == capped else 0)
                       for i, n in enumerate(E2E_NAMES))
    wait_for(all_counted, timeout=20, what="every hostile name's usage")
    with engine.begin() as conn:
        assert store.session_rows(conn, "alice@isp") == []
        for name in E2E_NAMES:
            assert {s["username"] for s in store.session_rows(conn, name)} == {name}
    reply = wait_for(lambda: (lambda r: r if r.code == radius_packet.AccessReject else None)(nas.login(capped)),
                     timeout=10, what="the capped hostile name to be refused")
    assert reply["Reply-Message"] == ["Your data cap is reached. Buy a top-up to reconnect."]
    assert nas.login("'; DROP TABLE services; -- ").code == radius_packet.AccessAccept  # another user
    assert set(inspect(engine).get_table_names()) == {t.name for t in store.metadata.sorted_tables}
    assert not server.quarantine()
