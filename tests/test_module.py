"""rlm_cap.module.Module as FreeRADIUS drives it, without FreeRADIUS.

The module gets rlm_python3's attribute tuples and answers OK (the NAS gets its
Accounting-Response) only once the record is durable: in the journal
(``journal`` mode) or committed to the database (``sync`` mode). The applier
thread applies the journal exactly once across restarts, crashes and
rotations. Runs on SQLite and MariaDB (the ``db_url`` fixture).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from rlm_cap import journal, ledger, store
from rlm_cap.module import (ERROR, INFO, MALFORMED, NOOP, NOT_DURABLE, OK, REJECT, UPDATED, WARNING, Config,
                            Module)
from rlm_cap.packets import parse_accounting

from .conftest import GB, NOW

NAS = "192.0.2.1"
T0 = NOW.timestamp()  # 10:00 UTC: outside the plan's 00:00-04:00 bonus frame
PASSWORD = "S3cretPw"
UNREACHABLE = f"mysql+pymysql://rlm_cap_test:{PASSWORD}@127.0.0.1:1/x"


# --------------------------------------------------------------------------- helpers

def acct(status, session="s1", user="alice@isp", nas=NAS, down=None, up=None, session_time=None, **extra):
    """An Accounting-Request as rlm_python3 passes it: (name, value) strings in packet order."""
    attrs = [("User-Name", user), ("NAS-IP-Address", nas), ("NAS-Port", "15728640"),
             ("Acct-Status-Type", status), ("Acct-Session-Id", session), ("Acct-Delay-Time", "0")]
    if up is not None:
        attrs += [("Acct-Input-Octets", str(up % 2**32)), ("Acct-Input-Gigawords", str(up >> 32))]
    if down is not None:
        attrs += [("Acct-Output-Octets", str(down % 2**32)), ("Acct-Output-Gigawords", str(down >> 32))]
    if session_time is not None:
        attrs.append(("Acct-Session-Time", str(session_time)))
    attrs += [(name.replace("_", "-"), str(value)) for name, value in extra.items()]
    return tuple(attrs)


def nas_reboot(nas=NAS):
    return (("NAS-IP-Address", nas), ("Acct-Status-Type", "Accounting-On"), ("Acct-Delay-Time", "0"))


def reboot_stream(count, down=1000, up=100, session="s1"):
    """Interim, Accounting-On, Interim, Accounting-On ...

    Every Interim reuses the Acct-Session-Id after a NAS reboot, so each one is
    a new session and counts all of its totals: unlike a plain session, a
    replay of any of these records counts again. Applying them more than
    once shows in the totals.
    """
    for _ in range(count):
        yield acct("Interim-Update", session, down=down, up=up, session_time=60)
        yield nas_reboot()


def wait_for(condition, timeout=20.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def usage(engine, service_id):
    """(counted, upload, download) bytes of the service's period containing NOW."""
    with engine.connect() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, service_id))
        row = store.find_period(conn, service_id, ctx.period(NOW).start)
        conn.rollback()
    if row is None:
        return (0, 0, 0)
    return (row["counted_bytes"], row["upload_bytes"], row["download_bytes"])


def counted(engine, service_id):
    return usage(engine, service_id)[0]


def saved_position(engine, node="t1"):
    with engine.connect() as conn:
        position = store.journal_position(conn, node)
        conn.rollback()
    return position


def caught_up(module):
    """The applier has committed everything the writer has written."""
    gen = module.writer.generation
    return module.applied == (gen, journal.file_size(Path(module.config.journal_dir), gen))


def errors(module, text=""):
    return [m for level, m in module.logs if level == ERROR and text in m]


@pytest.fixture
def sqlite_url(tmp_path):
    """A database for tests whose packets never reach it (one backend is enough)."""
    url = f"sqlite:///{tmp_path / 'local.sqlite3'}"
    engine = store.make_engine(url)
    store.create_schema(engine)
    engine.dispose()
    return url


@pytest.fixture
def modules(tmp_path):
    """``modules(url, mode=..., **config)``: a started Module; every one is stopped at the end."""
    made = []

    def make(url, mode="journal", **overrides):
        logs = []
        values = dict(db_url=url, mode=mode, journal_dir=str(tmp_path / "j"), node="t1",
                      apply_interval=0.01, state_refresh=0.05, drain_timeout=5)
        values.update(overrides)
        module = Module(Config(**values), lambda level, message: logs.append((level, message)))
        module.logs = logs
        module.stopped = False
        made.append(module)
        module.start()
        return module

    yield make
    for module in made:
        stop(module)


def stop(module):
    if not module.stopped:
        module.stopped = True
        module.stop()


def feed(module, packets, start=T0, step=1.0):
    results = [module.accounting(attrs, start + i * step) for i, attrs in enumerate(packets)]
    assert results == [OK] * len(results)
    return start + len(results) * step


# --------------------------------------------------------------------------- journal mode

def test_journal_mode_applies_exact_totals(db_url, engine, world, modules):
    sid = world["service_id"]
    module = modules(db_url)
    assert module.writer is not None and module.writer.generation == 1
    packets = [
        acct("Start"),
        acct("Interim-Update", down=1000, up=100, session_time=300),
        acct("Interim-Update", down=1000, up=100, session_time=300),  # retransmit: nothing more
        acct("Interim-Update", down=2**32 + 5000, up=700, session_time=600),
        acct("Interim-Update", down=1500, up=150, session_time=450),  # late: ignored
        acct("Stop", down=2**32 + 9000, up=900, session_time=900),
        acct("Stop"),  # a counter-less Stop changes nothing
        acct("Interim-Update", "other", user="nobody@isp", down=10**9, up=10**9),  # no CAP service
    ]
    feed(module, packets)
    assert wait_for(lambda: caught_up(module))
    assert usage(engine, sid) == (2**32 + 9000 + 900, 900, 2**32 + 9000)
    with engine.connect() as conn:
        sessions = store.session_rows(conn)
    assert [(s["username"], s["closed"]) for s in sessions] == [("alice@isp", "stop")]
    assert not errors(module)


def test_answer_is_given_before_the_database_has_the_record(db_url, engine, world, modules):
    """journal mode answers as soon as the record is in the journal file."""
    module = modules(db_url)
    before = journal.file_size(Path(module.config.journal_dir), 1)
    assert module.accounting(acct("Interim-Update", down=500, up=50, session_time=60), T0) == OK
    batch = journal.read_batch(Path(module.config.journal_dir), 1, before, 10)
    assert [(r.username, r.output_octets, r.input_octets) for _, r in batch.records] == [("alice@isp", 500, 50)]
    assert wait_for(lambda: counted(engine, world["service_id"]) == 550)


def test_journal_position_row_matches_the_file(db_url, engine, world, modules):
    module = modules(db_url)
    feed(module, reboot_stream(3))
    assert wait_for(lambda: caught_up(module))
    directory = Path(module.config.journal_dir)
    assert saved_position(engine) == (str(journal.path_of(directory, 1)), journal.file_size(directory, 1))
    assert counted(engine, world["service_id"]) == 3 * 1100
    assert saved_position(engine, "another-node") is None


def test_restart_resumes_exactly_once(db_url, engine, world, modules):
    sid = world["service_id"]
    first = modules(db_url)
    t = feed(first, reboot_stream(3))
    assert wait_for(lambda: caught_up(first))
    assert counted(engine, sid) == 3 * 1100
    stop(first)
    position = saved_position(engine)

    second = modules(db_url)  # same journal directory, same node
    assert second.writer.generation == 1
    assert wait_for(lambda: second.applied is not None)
    assert second.applied == (1, position[1])  # resumed where the first one stopped, not at 0
    feed(second, reboot_stream(2, down=20, up=2), start=t)
    assert wait_for(lambda: caught_up(second))
    assert counted(engine, sid) == 3 * 1100 + 2 * 22  # nothing applied twice, nothing lost
    stop(second)

    third = modules(db_url)
    feed(third, [acct("Interim-Update", "s9", down=7, up=0, session_time=1)], start=t + 100)
    assert wait_for(lambda: caught_up(third))
    assert counted(engine, sid) == 3 * 1100 + 2 * 22 + 7


def test_stop_drains_the_journal(db_url, engine, world, modules):
    module = modules(db_url, drain_timeout=30)  # a loaded machine must not turn this into a timeout
    feed(module, reboot_stream(40, down=10, up=1))
    stop(module)  # applies what is left before returning
    assert counted(engine, world["service_id"]) == 40 * 11
    assert caught_up(module)
    assert not [m for level, m in module.logs if level == WARNING]


def test_records_written_before_a_crash_are_applied_once(db_url, engine, world, modules, tmp_path):
    """FreeRADIUS died after answering: the records are in the journal, the database never saw them."""
    directory = tmp_path / "j"
    writer = journal.Writer(directory, 1)
    for i, attrs in enumerate(reboot_stream(5)):
        writer.append(parse_accounting(attrs, T0 + i))
    writer.close()

    first = modules(db_url)
    assert wait_for(lambda: caught_up(first))
    assert counted(engine, world["service_id"]) == 5 * 1100
    stop(first)

    second = modules(db_url)
    feed(second, [acct("Interim-Update", "s2", down=3, up=0, session_time=1)], start=T0 + 50)
    assert wait_for(lambda: caught_up(second))
    assert counted(engine, world["service_id"]) == 5 * 1100 + 3


def test_stop_without_drain_leaves_the_rest_for_the_next_start(db_url, engine, world, modules):
    sid = world["service_id"]
    hasty = modules(db_url, drain_timeout=0)
    t = feed(hasty, reboot_stream(40, down=10, up=1))
    stop(hasty)  # may leave records unapplied ("applied at the next start")
    assert counted(engine, sid) <= 40 * 11

    module = modules(db_url)
    feed(module, [acct("Interim-Update", "last", down=5, up=0, session_time=1)], start=t)
    assert wait_for(lambda: caught_up(module))
    assert counted(engine, sid) == 40 * 11 + 5


def test_torn_record_from_a_crash_is_skipped_and_the_rest_applied(db_url, engine, world, modules, tmp_path):
    directory = tmp_path / "j"
    writer = journal.Writer(directory, 1)
    writer.append(parse_accounting(acct("Interim-Update", "a", down=100, up=0, session_time=1), T0))
    writer.close()
    torn_at = journal.file_size(directory, 1)
    with open(journal.path_of(directory, 1), "ab") as handle:
        handle.write(journal.encode(parse_accounting(acct("Interim-Update", "b", down=10**6), T0))[:30])

    module = modules(db_url)  # terminates the torn line
    feed(module, [acct("Interim-Update", "c", down=200, up=0, session_time=1)], start=T0 + 1)
    assert wait_for(lambda: caught_up(module))
    assert counted(engine, world["service_id"]) == 300
    assert len(errors(module, "damaged record skipped")) == 1
    assert f"offset {torn_at}" in errors(module, "damaged record skipped")[0]


def test_damaged_line_is_logged_skipped_and_the_rest_applied(db_url, engine, world, modules):
    sid = world["service_id"]
    module = modules(db_url)
    feed(module, [acct("Interim-Update", "a", down=100, up=10, session_time=1)])
    assert wait_for(lambda: caught_up(module))
    path = journal.path_of(Path(module.config.journal_dir), 1)
    damaged_at = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b'{"this is": "not a journal record"}\n')
        handle.write(b'[1,"Interim-Update","192.0.2.1","x","alice@isp","noon",1,0,1,0,1,null,null]\n')
    feed(module, [acct("Interim-Update", "b", down=200, up=20, session_time=1)], start=T0 + 10)
    assert wait_for(lambda: caught_up(module))
    assert counted(engine, sid) == 330
    logged = errors(module, "damaged record skipped")
    assert len(logged) == 2
    assert f"journal.1 offset {damaged_at}:" in logged[0]
    assert any(t.name == "rlm_cap-applier" and t.is_alive() for t in module._threads)


def test_rotation_by_generation(db_url, engine, world, modules):
    sid = world["service_id"]
    module = modules(db_url, rotate_bytes=200)
    directory = Path(module.config.journal_dir)
    t = T0
    for attrs in reboot_stream(8, down=100, up=1):
        t = feed(module, [attrs], start=t)
        assert wait_for(lambda: caught_up(module))
    expected = 8 * 101
    assert module.writer.generation >= 4, "16 records of ~100 bytes with rotate_bytes=200"
    assert wait_for(lambda: journal.generations(directory) == [module.writer.generation])  # old files deleted
    assert counted(engine, sid) == expected
    generation = module.writer.generation
    assert saved_position(engine) == (str(journal.path_of(directory, generation)),
                                      journal.file_size(directory, generation))
    stop(module)

    again = modules(db_url, rotate_bytes=200)  # restart on the newest generation
    assert again.writer.generation == generation
    feed(again, reboot_stream(2, down=3, up=0), start=t)
    assert wait_for(lambda: caught_up(again))
    assert counted(engine, sid) == expected + 6
    # Caught up may be seen just as the applier rotates: the old file goes right after.
    assert wait_for(lambda: journal.generations(directory) == [again.writer.generation])


def test_restart_between_rotation_and_its_commit(db_url, engine, world, modules, tmp_path):
    """The writer moved on to journal.2 but the database still says journal.1 at its end."""
    sid = world["service_id"]
    module = modules(db_url)
    t = feed(module, reboot_stream(2))
    assert wait_for(lambda: caught_up(module))
    stop(module)
    directory = tmp_path / "j"
    writer = journal.Writer(directory, 1)
    assert writer.rotate(1, journal.file_size(directory, 1)) == 2
    for i, attrs in enumerate(reboot_stream(2, down=10, up=0)):
        writer.append(parse_accounting(attrs, t + i))
    writer.close()

    again = modules(db_url)
    assert again.writer.generation == 2
    assert wait_for(lambda: caught_up(again))
    assert counted(engine, sid) == 2 * 1100 + 2 * 10
    assert journal.generations(directory) == [2]
    assert saved_position(engine) == (str(journal.path_of(directory, 2)), journal.file_size(directory, 2))


# --------------------------------------------------------------------------- database unavailable

def test_journal_mode_with_database_down_answers_and_keeps_records(modules, tmp_path):
    module = modules(UNREACHABLE, rotate_bytes=200)
    packets = list(reboot_stream(5))
    feed(module, packets)
    assert wait_for(lambda: errors(module, "database unavailable"))
    directory = tmp_path / "j"
    batch = journal.read_batch(directory, 1, 0, 100)
    assert len(batch.records) == len(packets) and batch.damaged == []
    assert journal.generations(directory) == [1]  # never rotated: nothing is applied
    assert module.applied is None
    started = time.monotonic()
    stop(module)
    assert time.monotonic() - started < 5
    assert len(errors(module, "database unavailable")) == 1
    assert "records wait in the journal" in errors(module, "database unavailable")[0]
    assert not any(PASSWORD in message for _, message in module.logs)


def test_records_kept_while_the_database_was_down_are_applied_later(db_url, engine, world, modules):
    down = modules(UNREACHABLE)
    t = feed(down, reboot_stream(4))
    stop(down)
    assert counted(engine, world["service_id"]) == 0

    up = modules(db_url)  # same journal, same node, database back
    feed(up, [acct("Interim-Update", "z", down=1, up=0, session_time=1)], start=t)
    assert wait_for(lambda: caught_up(up))
    assert counted(engine, world["service_id"]) == 4 * 1100 + 1


@pytest.mark.parametrize("url", [
    UNREACHABLE,  # nothing listens on port 1
    f"mysql+pymysql://rlm_cap_test:{PASSWORD}@127.0.0.1:3306/rlm_cap_test",  # wrong password
])
def test_sync_mode_database_down_is_not_durable_and_logged_once(url, modules):
    module = modules(url, mode="sync")
    assert module.writer is None
    # the state refresher meets the outage first; wait for it so the count below is deterministic
    assert wait_for(lambda: errors(module, "database unavailable"))
    results = [module.accounting(acct("Interim-Update", down=100 * i, up=0, session_time=i), T0 + i)
               for i in range(1, 4)]
    assert results == [NOT_DURABLE] * 3  # no Accounting-Response: the NAS retransmits
    logged = errors(module, "database unavailable")
    assert len(logged) == 1
    assert "the NAS will retransmit" in logged[0]
    assert not any(PASSWORD in message for _, message in module.logs)
    started = [m for level, m in module.logs if level == INFO and "started in sync mode" in m]
    assert started and "***" in started[0]


# --------------------------------------------------------------------------- sync mode

def test_sync_mode_commits_before_answering(db_url, engine, world, modules, tmp_path):
    sid = world["service_id"]
    module = modules(db_url, mode="sync")
    assert module.writer is None
    assert module.accounting(acct("Start"), T0) == OK
    assert module.accounting(acct("Interim-Update", down=5000, up=500, session_time=60), T0 + 60) == OK
    assert usage(engine, sid) == (5500, 500, 5000)  # committed when accounting() returned
    assert module.accounting(acct("Interim-Update", down=5000, up=500, session_time=60), T0 + 61) == OK
    assert module.accounting(acct("Stop", down=8000, up=800, session_time=120), T0 + 120) == OK
    assert usage(engine, sid) == (8800, 800, 8000)
    assert not (tmp_path / "j").exists()  # no journal in sync mode
    assert saved_position(engine) is None


def test_sync_mode_replays_are_idempotent(db_url, engine, world, modules):
    module = modules(db_url, mode="sync")
    packet = acct("Interim-Update", down=123, up=4, session_time=60)
    for i in range(5):  # the NAS retransmits after a lost response
        assert module.accounting(packet, T0 + i) == OK
    assert counted(engine, world["service_id"]) == 127


# --------------------------------------------------------------------------- what is not usage

@pytest.mark.parametrize("mode", ["journal", "sync"])
@pytest.mark.parametrize("attrs, reason", [
    (acct("Interim-Update", user=""), "no User-Name"),
    (acct("Interim-Update", down=None, Acct_Output_Octets="lots"), "Acct-Output-Octets is not a whole number"),
    ((("Acct-Status-Type", "Start"),), "no NAS-IP-Address"),
    ((), "no Acct-Status-Type"),
    (None, "no Acct-Status-Type"),
])
def test_malformed_packet_is_answered_malformed_with_a_log_line(sqlite_url, modules, tmp_path, mode,
                                                                attrs, reason):
    module = modules(sqlite_url, mode=mode)
    assert module.accounting(attrs, T0) == MALFORMED
    logged = errors(module, "malformed Accounting-Request")
    assert len(logged) == 1 and reason in logged[0]
    if mode == "journal":
        assert journal.file_size(tmp_path / "j", 1) == 0  # nothing journalled


@pytest.mark.parametrize("mode", ["journal", "sync"])
def test_unknown_status_type_is_answered_and_not_stored(sqlite_url, modules, tmp_path, mode):
    module = modules(sqlite_url, mode=mode)
    assert module.accounting(acct("Failed", down=100), T0) == OK
    assert module.accounting(acct("15", down=100), T0) == OK
    assert not errors(module)
    if mode == "journal":
        assert journal.file_size(tmp_path / "j", 1) == 0


@pytest.mark.parametrize("mode", ["journal", "sync"])
def test_unknown_user_is_answered_and_nothing_stored(db_url, engine, world, modules, mode):
    module = modules(db_url, mode=mode)
    feed(module, [acct("Start", user="stranger"), acct("Interim-Update", user="stranger", down=9, up=9)])
    if mode == "journal":
        assert wait_for(lambda: caught_up(module))
    with engine.connect() as conn:
        assert store.session_rows(conn) == []
        conn.rollback()
    assert counted(engine, world["service_id"]) == 0


# --------------------------------------------------------------------------- authorize

def login(user="alice@isp"):
    return (("User-Name", user), ("User-Password", "x"), ("NAS-IP-Address", NAS), ("NAS-Port", "1"))


def cap(engine, world, state="capped", **plan):
    with engine.begin() as conn:
        if plan:
            store.update_plan(conn, world["plan_id"], **plan)
        store.update_service(conn, world["service_id"], cap_state=state)


def answers(module, expected, user="alice@isp"):
    """One refresh of authorize's map (what the applier does after a batch), then a login.

    The state thread refreshes the same map concurrently; refresh_state must
    leave the newest snapshot in place (see test_a_stale_state_snapshot_...).
    """
    module.refresh_state()
    return module.authorize(login(user)) == expected


@pytest.mark.parametrize("plan, expected", [
    (dict(action="block"), (REJECT, (("Reply-Message", Config.reject_message),))),
    (dict(action="fixed", fixed_rate="1M/2M"), (UPDATED, (("Mikrotik-Rate-Limit", "1M/2M"),))),
    (dict(), (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),))),  # the world's plan: reduce 50 % of 10M/20M
    (dict(reduce_percent=75, normal_rate="8M/16M"), (UPDATED, (("Mikrotik-Rate-Limit", "2M/4M"),))),
])
def test_authorize_capped_service_gets_the_plan_action(db_url, engine, world, modules, plan, expected):
    module = modules(db_url, mode="sync", state_refresh=60)  # only the explicit refresh below
    cap(engine, world, **plan)
    assert answers(module, expected)
    assert module.authorize(login("bob@isp")) == (NOOP, ())


def test_authorize_uses_configured_rate_attribute_and_message(db_url, engine, world, modules):
    module = modules(db_url, mode="sync", rate_attribute="Cisco-AVPair", reject_message="Cap reached")
    cap(engine, world)
    assert answers(module, (UPDATED, (("Cisco-AVPair", "5M/10M"),)))
    cap(engine, world, action="block")
    assert answers(module, (REJECT, (("Reply-Message", "Cap reached"),)))


def test_authorize_rate_attribute_follows_the_nas_type(db_url, engine, world, modules):
    """The nas table's type picks the attribute; a NAS not in the table gets rate_attribute."""
    module = modules(db_url, mode="sync", rate_attributes={"mikrotik": "Mikrotik-Rate-Limit",
                                                           "cisco": "Cisco-AVPair"})
    with engine.begin() as conn:
        store.add_nas(conn, NAS, "s", type="cisco")
        store.add_nas(conn, "192.0.2.9", "s", type="mikrotik")
    cap(engine, world)
    assert answers(module, (UPDATED, (("Cisco-AVPair", "5M/10M"),)))
    other = (("User-Name", "alice@isp"), ("NAS-IP-Address", "192.0.2.9"))
    assert module.authorize(other) == (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),))
    unknown = (("User-Name", "alice@isp"), ("NAS-IP-Address", "198.51.100.1"))
    assert module.authorize(unknown) == (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),))


def test_rate_attributes_config_is_parsed_and_checked():
    assert Config.from_radiusd({"db_url": "sqlite://", "rate_attributes": "mikrotik=Mikrotik-Rate-Limit x=Y"}
                               ).rate_attributes == {"mikrotik": "Mikrotik-Rate-Limit", "x": "Y"}
    with pytest.raises(ValueError, match="TYPE=ATTRIBUTE"):
        Config.from_radiusd({"db_url": "sqlite://", "rate_attributes": "mikrotik"})


def test_authorize_noop_for_uncapped_unknown_or_missing_user(db_url, engine, world, modules):
    module = modules(db_url, mode="sync")
    module.refresh_state()
    assert module.authorize(login()) == (NOOP, ())
    assert module.authorize(login("nobody")) == (NOOP, ())
    assert module.authorize((("NAS-IP-Address", NAS),)) == (NOOP, ())
    assert module.authorize(()) == (NOOP, ())
    assert module.authorize(None) == (NOOP, ())
    cap(engine, world)
    assert answers(module, (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),)))
    assert module.authorize(login("ALICE@isp")) == (NOOP, ())  # User-Names are exact
    cap(engine, world, state="ok")  # a top-up restored it
    assert answers(module, (NOOP, ()))


def test_authorize_capped_service_without_a_rate_is_left_alone(db_url, engine, world, modules):
    module = modules(db_url, mode="sync")
    cap(engine, world, action="fixed", fixed_rate=None)

    def refreshed():
        module.refresh_state()
        return "alice@isp" in module.capped
    assert wait_for(refreshed, timeout=5)
    assert module.authorize(login()) == (NOOP, ())


def test_usage_past_the_limit_caps_the_service_through_the_journal(db_url, engine, world, modules):
    """The applier refreshes authorize's map after each batch: no query at login."""
    module = modules(db_url, state_refresh=60)
    assert module.authorize(login()) == (NOOP, ())
    feed(module, [acct("Start"), acct("Interim-Update", down=9 * GB, up=0, session_time=300)])
    assert wait_for(lambda: caught_up(module))
    assert module.authorize(login()) == (NOOP, ())  # 9 of 10 GB: not capped yet
    feed(module, [acct("Interim-Update", down=10 * GB + 1, up=0, session_time=600)], start=T0 + 600)
    assert wait_for(lambda: module.authorize(login()) == (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),)))
    with engine.connect() as conn:
        assert store.find_service(conn, world["service_id"])["cap_state"] == "capped"
        conn.rollback()


def test_usage_past_the_limit_in_sync_mode_caps_at_the_next_refresh(db_url, engine, world, modules):
    module = modules(db_url, mode="sync", state_refresh=60)
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], action="block")
    assert module.accounting(acct("Interim-Update", down=11 * GB, up=0, session_time=300), T0) == OK
    with engine.connect() as conn:
        assert store.find_service(conn, world["service_id"])["cap_state"] == "capped"
        conn.rollback()
    assert answers(module, (REJECT, (("Reply-Message", Config.reject_message),)))


# --------------------------------------------------------------------------- long RADIUS strings

@pytest.mark.parametrize("mode", ["journal", "sync"])
@pytest.mark.parametrize("key", ["session", "nas"])
def test_253_character_session_id_or_nas_identifier_is_counted(db_url, engine, world, modules, mode, key):
    """RADIUS strings may be 253 octets and packets.py accepts them: the sessions table must hold them.

    (With VARCHAR(128) columns MariaDB refused them: sync mode answered NOT_DURABLE
    forever, journal mode skipped the record and lost its usage.)
    """
    module = modules(db_url, mode=mode)
    long = "x" * 253
    if key == "session":
        attrs = acct("Interim-Update", long, down=1000, up=0, session_time=60)
    else:
        attrs = tuple(p for p in acct("Interim-Update", down=1000, up=0, session_time=60)
                      if p[0] != "NAS-IP-Address") + (("NAS-Identifier", long),)
    feed(module, [attrs])
    if mode == "journal":
        assert wait_for(lambda: caught_up(module))
    assert counted(engine, world["service_id"]) == 1000
    assert not errors(module)


# --------------------------------------------------------------------------- more of the hot path

@pytest.mark.parametrize("mode", ["journal", "sync"])
def test_counters_the_database_cannot_store_are_malformed_not_a_crash(db_url, engine, world, modules, mode):
    module = modules(db_url, mode=mode)
    huge = acct("Interim-Update", down=None, Acct_Output_Octets=str(2**64 - 1),
                Acct_Output_Gigawords=str(2**32 - 1))
    assert module.accounting(huge, T0) == MALFORMED
    assert module.accounting(acct("Interim-Update", session_time=2**40, down=5, up=0), T0) == MALFORMED
    assert len(errors(module, "malformed Accounting-Request")) == 2
    feed(module, [acct("Interim-Update", down=10, up=0, session_time=5)], start=T0 + 1)
    if mode == "journal":
        assert wait_for(lambda: caught_up(module))
    assert counted(engine, world["service_id"]) == 10
    assert not errors(module, "database unavailable")


def test_journal_write_failure_is_not_durable(db_url, world, modules, monkeypatch):
    module = modules(db_url)

    def disk_full(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.writer, "append", disk_full)
    assert module.accounting(acct("Interim-Update", down=1, up=1, session_time=1), T0) == NOT_DURABLE
    assert "journal write failed" in errors(module)[0] and "No space left" in errors(module)[0]
    monkeypatch.undo()
    assert module.accounting(acct("Interim-Update", down=1, up=1, session_time=1), T0) == OK


@pytest.mark.parametrize("mode", ["journal", "sync"])
def test_keep_unknown_stores_sessions_of_unknown_users(db_url, engine, world, modules, mode):
    module = modules(db_url, mode=mode, keep_unknown=True)
    feed(module, [acct("Interim-Update", user="stranger", down=9, up=1, session_time=5)])
    if mode == "journal":
        assert wait_for(lambda: caught_up(module))
    with engine.connect() as conn:
        rows = store.session_rows(conn, "stranger")
        conn.rollback()
    assert [(r["output_total"], r["input_total"], r["service_id"]) for r in rows] == [(9, 1, None)]


@pytest.mark.parametrize("trust", [False, True])
def test_trust_event_timestamp_decides_the_record_time(db_url, world, modules, tmp_path, trust):
    module = modules(db_url, trust_event_timestamp=trust)
    attrs = acct("Interim-Update", down=1, up=0, session_time=1) + (
        ("Event-Timestamp", "Nov  3 2026 09:00:00 UTC"), ("Tmp-Integer-0", str(int(T0) - 3600)))
    assert module.accounting(attrs, T0) == OK
    (record,) = [r for _, r in journal.read_batch(tmp_path / "j", 1, 0, 10).records]
    assert record.time == (NOW - timedelta(hours=1) if trust else NOW)


# --------------------------------------------------------------------------- Config from radiusd.config

def test_config_from_radiusd_strings():
    config = Config.from_radiusd({
        "db_url": "sqlite:///x.db", "mode": "sync", "journal_dir": "/tmp/j", "node": "radius-2",
        "fsync": "yes", "batch_size": "100", "apply_interval": "0.5", "rotate_bytes": "1000",
        "keep_unknown": "On", "trust_event_timestamp": "true", "state_refresh": "3",
        "rate_attribute": "Cisco-AVPair", "reject_message": "No data left", "drain_timeout": "2.5",
        "unrelated": None})
    assert config == Config(db_url="sqlite:///x.db", mode="sync", journal_dir="/tmp/j", node="radius-2",
                            fsync=True, batch_size=100, apply_interval=0.5, rotate_bytes=1000,
                            keep_unknown=True, trust_event_timestamp=True, state_refresh=3.0,
                            rate_attribute="Cisco-AVPair", reject_message="No data left", drain_timeout=2.5)


def test_config_defaults():
    import socket
    config = Config.from_radiusd({"db_url": "sqlite:///x.db", "node": None, "fsync": "no"})
    assert config.mode == "journal" and config.node == socket.gethostname()
    assert (config.fsync, config.keep_unknown, config.trust_event_timestamp) == (False, False, False)
    assert config.batch_size == 10000 and config.rotate_bytes == 64 * 2**20


@pytest.mark.parametrize("values, message", [
    ({}, "db_url"),
    (None, "db_url"),
    ({"db_url": ""}, "db_url"),
    ({"db_url": "sqlite://", "mode": "async"}, "mode must be journal or sync"),
    ({"db_url": "sqlite://", "batch_size": "0"}, "above zero"),
    ({"db_url": "sqlite://", "apply_interval": "0"}, "above zero"),
    ({"db_url": "sqlite://", "state_refresh": "-1"}, "above zero"),
])
def test_config_errors_say_what_is_wrong(values, message):
    with pytest.raises(ValueError, match=message):
        Config.from_radiusd(values)


def test_a_stale_state_snapshot_does_not_overwrite_a_newer_one(db_url, engine, world, modules, monkeypatch):
    """refresh_state runs in the state thread and in the applier (after each batch): a snapshot read
    before a batch capped a service must not replace the applier's newer one, or authorize lets the
    capped user in at full speed until the next state_refresh."""
    if db_url.startswith("sqlite"):
        # SQLite's BEGIN IMMEDIATE makes the paused read below hold the write lock, so the change
        # waits for it; the window (between the read and the assignment) is too short to hit here.
        pytest.skip("needs a database where a read does not block writers")
    original = store.capped_services
    read_old, release = threading.Event(), threading.Event()

    def slow_in_state_thread(conn):
        rows = original(conn)
        if threading.current_thread().name == "rlm_cap-state" and not release.is_set():
            read_old.set()  # the state thread holds rows read before the change below
            release.wait(5)
        return rows

    monkeypatch.setattr(store, "capped_services", slow_in_state_thread)
    module = modules(db_url, mode="sync", state_refresh=60)
    assert read_old.wait(5)
    cap(engine, world)  # what a batch of the applier did ...
    fresh = threading.Thread(target=module.refresh_state)  # ... and its refresh after the batch
    fresh.start()
    fresh.join(1.0)
    release.set()
    fresh.join(5)
    capped_answer = (UPDATED, (("Mikrotik-Rate-Limit", "5M/10M"),))
    assert not wait_for(lambda: module.authorize(login()) != capped_answer, timeout=0.5)


def test_sync_mode_record_the_database_refuses_is_not_called_an_outage(db_url, world, modules, monkeypatch):
    """A record the database refuses for good (DataError, IntegrityError) would fail on every
    retransmission: it is answered and quarantined with its reason, not blamed on an outage."""
    from sqlalchemy.exc import DataError

    module = modules(db_url, mode="sync")

    def refused(conn, record, *args, **kwargs):
        raise DataError("INSERT INTO sessions ...", {}, Exception(
            "(1406, \"Data too long for column 'framed_ip' at row 1\")"))

    monkeypatch.setattr(ledger, "apply_record", refused)
    results = {module.accounting(acct("Interim-Update", down=1, up=0, session_time=1), T0 + i) for i in range(3)}
    assert not errors(module, "database unavailable")
    assert results == {MALFORMED}  # answered; the site's guard keeps the packet in the quarantine file
    assert errors(module, "Data too long")


def test_applier_survives_an_unexpected_error(db_url, engine, world, modules, monkeypatch):
    original = journal.read_batch
    failures = []

    def flaky_read(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OSError(5, "Input/output error")
        return original(*args, **kwargs)

    monkeypatch.setattr(journal, "read_batch", flaky_read)
    module = modules(db_url)
    feed(module, [acct("Interim-Update", down=10, up=0, session_time=1)])
    assert wait_for(lambda: failures and caught_up(module), timeout=3)
    assert counted(engine, world["service_id"]) == 10
    assert errors(module, "Input/output error")


def test_a_failure_inside_one_by_one_never_replays_committed_records(db_url, engine, world, modules, monkeypatch):
    """Review finding: after a transient error part-way through applying a batch record by
    record, the applier re-read the batch from its start and counted a Start-after-Stop again."""
    from sqlalchemy.exc import OperationalError
    real = ledger.apply_records
    failed = []

    def flaky(conn, records, keep=False, cache=None):
        if len(records) > 1:
            raise ValueError("some record of this batch cannot be applied")  # -> one by one
        if records and records[0].status == "Start" and records[0].time.minute == 7 and not failed:
            failed.append(1)
            raise OperationalError("UPDATE", {}, Exception(2013, "Lost connection during query"))
        return real(conn, records, keep, cache)
    monkeypatch.setattr(ledger, "apply_records", flaky)
    module = modules(db_url)
    minute = 60
    feed(module, [acct("Start"), acct("Interim-Update", down=500, up=0, session_time=300),
                  acct("Stop", down=800, up=0, session_time=360)], start=T0, step=minute)
    feed(module, [acct("Start"), acct("Interim-Update", down=100, up=0, session_time=300)],
         start=T0 + 7 * minute, step=5 * minute)
    assert wait_for(lambda: caught_up(module))
    assert failed and counted(engine, world["service_id"]) == 900
    with engine.begin() as conn:
        assert [(s["output_total"], s["closed"]) for s in store.session_rows(conn, "alice@isp")] == [
            (800, "stop"), (100, None)]


def test_a_value_the_database_refuses_skips_one_record_not_the_journal(db_url, engine, world, modules, monkeypatch):
    """PyMySQL raises some refusals of one statement as OperationalError (1690: a sum out of
    range). Called an outage, the batch was retried forever and no later record was applied."""
    from sqlalchemy.exc import OperationalError
    real = ledger.apply_records

    def refusing(conn, records, keep=False, cache=None):
        if any(record.session_id == "poison" for record in records):
            raise OperationalError("UPDATE periods ...", {}, Exception(1690, "BIGINT UNSIGNED value is out of range"))
        return real(conn, records, keep, cache)
    monkeypatch.setattr(ledger, "apply_records", refusing)
    module = modules(db_url)
    feed(module, [acct("Interim-Update", session="poison", down=10**15, up=0, session_time=1),
                  acct("Interim-Update", down=700, up=0, session_time=60)])
    assert wait_for(lambda: caught_up(module))
    assert counted(engine, world["service_id"]) == 700
    assert errors(module, "skipped, it cannot be applied")
    assert not errors(module, "database unavailable")


@pytest.mark.parametrize("code, outage", [(2013, True), (2003, True), (1213, True), (1021, True),
                                          (1690, False), (1366, False)])
def test_which_mariadb_errors_are_an_outage(code, outage):
    from sqlalchemy.exc import OperationalError

    from rlm_cap.module import _transient
    assert _transient(OperationalError("UPDATE ...", {}, Exception(code, "message"))) is outage


@pytest.mark.parametrize("records, pause", [(0, 0.0), (99, 0.0), (500, 0.1), (4000, 0.8), (9999, 1.0),
                                            (10000, 0.0)])
def test_after_a_large_batch_the_applier_lets_the_journal_fill(records, pause):
    """Small batches: the applier keeps up, no pause. Large ones: a burst, so wait for the next
    batch to hold several records per session (one database row). Full: a backlog, no pause."""
    module = Module(Config(db_url="sqlite://", apply_interval=0.02, max_apply_interval=1.0, batch_size=10000),
                    lambda level, message: None)
    assert module._pause_after(records) == pytest.approx(pause)


def test_an_outage_seen_by_writes_is_not_ended_by_a_read(db_url, world, modules, monkeypatch):
    """A full or read-only database still answers reads: the state refresh must not log
    'database back' every time while every write keeps failing."""
    from sqlalchemy.exc import OperationalError
    real = ledger.apply_record

    def full(*args, **kwargs):
        raise OperationalError("UPDATE", {}, Exception("database or disk is full"))
    monkeypatch.setattr(ledger, "apply_record", full)
    module = modules(db_url, mode="sync")
    assert module.accounting(acct("Interim-Update", down=10, up=0, session_time=1), T0) == NOT_DURABLE
    time.sleep(0.3)  # six state refreshes (state_refresh 0.05), each a successful read
    assert len(errors(module, "database unavailable")) == 1
    assert not [m for level, m in module.logs if "database back" in m]
    monkeypatch.setattr(ledger, "apply_record", real)
    assert module.accounting(acct("Interim-Update", down=10, up=0, session_time=1), T0 + 1) == OK
    assert len([m for level, m in module.logs if "database back" in m]) == 1
