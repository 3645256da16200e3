"""A read-only or full disk under the SQLite default: a clear error, no corruption, nothing lost.

- A read-only database file: ``capctl`` says so in one line and exits
  non-zero; the module in sync mode answers NOT_DURABLE (no Accounting-Response,
  the NAS retransmits) with one clear log line, and counts the record once the
  file is writable again.
- A full disk, simulated without a loop device by SQLite's own page limit
  (``PRAGMA max_page_count``: SQLITE_FULL, "database or disk is full", exactly
  what a full filesystem gives): the refused change is rolled back whole, the
  database passes ``PRAGMA integrity_check`` and every earlier row is intact;
  sync mode does not answer, journal mode answers and applies the backlog once
  there is room again.
- A full disk under the journal (a file size limit, ``RLIMIT_FSIZE``, in a child
  process): the write is refused, the record is not answered, and no fragment
  of it is left in the journal to spoil the next record.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from cli.main import capctl
from rlm_cap import journal, store
from rlm_cap.module import ERROR, INFO, NOT_DURABLE, OK

from .cli_helpers import _ENGINES, PLAN, SERVICE, fails, make_world, ok, snapshot
from .conftest import make_world as make_world_engine
from .test_module import T0, acct, counted, modules, wait_for  # noqa: F401 - modules: the fixture


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _file(url: str) -> str:
    return url.removeprefix("sqlite:///")


def integrity(url: str) -> str:
    with closing(sqlite3.connect(_file(url))) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def checkpoint(url: str) -> None:
    """Close capctl's cached connections and fold the WAL into the main file: the file alone is the database."""
    for key in [k for k in _ENGINES if k[0] == url]:
        _ENGINES.pop(key).dispose()
    with closing(sqlite3.connect(_file(url))) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def read_only(path: Path):
    """Make ``path`` read-only for this process, root included (chattr +i), and undo it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=True, timeout=10)
    try:
        with pytest.raises(PermissionError):
            open(path, "r+b").close()  # really read-only, or the test would prove nothing
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True, timeout=10)
        path.chmod(mode)


pytestmark = pytest.mark.skipif(os.geteuid() == 0 and shutil.which("chattr") is None,
                                reason="as root, a read-only file needs chattr (e2fsprogs)")


# --------------------------------------------------------------------------- read-only database file

@pytest.fixture
def populated(tmp_path):
    url = sqlite_url(tmp_path / "rlm_cap.sqlite3")
    engine = store.make_engine(url)
    store.create_schema(engine)
    engine.dispose()
    make_world(url)
    ok(url, "topup", "add", SERVICE, "--plan", "5GB")
    checkpoint(url)
    return url


def test_capctl_on_a_read_only_database_file_says_so_and_changes_nothing(populated, tmp_path):
    path = tmp_path / "rlm_cap.sqlite3"
    before = snapshot(populated)
    checkpoint(populated)  # no connection opened while the file was writable
    with read_only(path):
        for args in [("plan", "add", "X", "--limit", "1GB"), ("topup", "add", SERVICE, "--size", "1GB", "--price", "0"),
                     ("balance", "add", "alice", "5"), ("settings", "set", "check_balance", "yes")]:
            message = fails(populated, *args, fresh=True)
            assert "readonly database" in message or "read-only" in message, (args, message)
        assert "Home 10GB" in ok(populated, "plan", "list", fresh=True)  # reading still works
        assert ok(populated, "db", "init", fresh=True).startswith("database ready")  # nothing to create
    assert snapshot(populated) == before
    assert integrity(populated) == "ok"
    ok(populated, "plan", "add", "X", "--limit", "1GB", fresh=True)  # writable again: works again


def test_sync_module_on_a_read_only_database_file_does_not_answer(tmp_path, modules):
    url = sqlite_url(tmp_path / "db.sqlite3")
    engine = store.make_engine(url)
    store.create_schema(engine)
    world = make_world_engine(engine)
    engine.dispose()
    checkpoint(url)
    record = acct("Interim-Update", "s1", down=5000, up=0, session_time=60)
    with read_only(tmp_path / "db.sqlite3"):
        module = modules(url, mode="sync")
        assert [module.accounting(record, T0 + i) for i in range(3)] == [NOT_DURABLE] * 3  # the NAS retransmits
        logged = [m for level, m in module.logs if level == ERROR]
        assert len(logged) == 1, logged  # one line per outage, not one per packet
        assert "database unavailable (attempt to write a readonly database)" in logged[0]
        assert "the NAS will retransmit" in logged[0]
    assert integrity(url) == "ok"
    engine = store.make_engine(url)
    try:
        assert counted(engine, world["service_id"]) == 0
    finally:
        engine.dispose()
    module.stop()  # a restart (FreeRADIUS's) opens the file anew
    module.stopped = True
    again = modules(url, mode="sync")
    assert again.accounting(record, T0 + 10) == OK  # the retransmission, once the file is writable
    engine = store.make_engine(url)
    try:
        assert counted(engine, world["service_id"]) == 5000
    finally:
        engine.dispose()


def test_sync_module_recovers_once_the_file_is_writable_again(tmp_path, modules):
    url = sqlite_url(tmp_path / "db.sqlite3")
    engine = store.make_engine(url)
    store.create_schema(engine)
    make_world_engine(engine)
    engine.dispose()
    checkpoint(url)
    record = acct("Interim-Update", "s1", down=5000, up=0, session_time=60)
    with read_only(tmp_path / "db.sqlite3"):
        module = modules(url, mode="sync")
        assert module.accounting(record, T0) == NOT_DURABLE
    assert wait_for(lambda: module.accounting(record, T0 + 1) == OK, timeout=1.5, interval=0.2)
    assert any(level == INFO and "database back" in m for level, m in module.logs)


# --------------------------------------------------------------------------- full disk (SQLITE_FULL)

def limit_pages(engine, pages: int) -> None:
    """Every connection of ``engine`` may grow the database to ``pages`` pages only."""
    @event.listens_for(engine, "connect")
    def _limit(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()


def page_count(url: str) -> int:
    with closing(sqlite3.connect(_file(url))) as conn:
        return conn.execute("PRAGMA page_count").fetchone()[0]


def test_capctl_on_a_full_disk_says_so_and_leaves_the_database_intact(populated):
    before = snapshot(populated)
    engine = store.make_engine(populated)
    limit_pages(engine, page_count(populated))
    try:
        result = CliRunner().invoke(capctl, ["--db", populated, "notification", "add", PLAN, "--source", "monthly",
                                             "--threshold", "90", "--body", "x" * 60_000], obj={"engine": engine})
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert result.output.splitlines() == [
            "Error: database error: database or disk is full (the disk is full: nothing was changed)"]
    finally:
        engine.dispose()
    assert snapshot(populated) == before
    assert integrity(populated) == "ok"
    ok(populated, "notification", "add", PLAN, "--source", "monthly", "--threshold", "90", "--body", "x" * 60_000)


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """A world on SQLite whose engines (as the module makes them) may not grow the file past
    ``limit["pages"]`` pages; the limit applies to connections opened after it is set."""
    url = sqlite_url(tmp_path / "db.sqlite3")
    engine = store.make_engine(url)
    store.create_schema(engine)
    world = make_world_engine(engine)
    engine.dispose()
    limit = {"pages": None}
    make_engine = store.make_engine

    def limited(url_, **kwargs):
        made = make_engine(url_, **kwargs)
        if limit["pages"] is not None:
            limit_pages(made, limit["pages"])
        return made
    monkeypatch.setattr(store, "make_engine", limited)
    return url, world, limit


def new_sessions(count: int, start: int = 0):
    """Interims of new sessions: each one adds a row, so the file has to grow sooner or later."""
    return [acct("Interim-Update", f"sess-{i:05d}-" + "x" * 200, down=1000 + i, up=0, session_time=60)
            for i in range(start, start + count)]


def test_sync_module_on_a_full_disk_answers_only_what_it_stored(full_disk, modules):
    url, world, limit = full_disk
    limit["pages"] = page_count(url) + 3
    module = modules(url, mode="sync")
    answers = [module.accounting(attrs, T0 + i) for i, attrs in enumerate(new_sessions(60))]
    assert OK in answers and NOT_DURABLE in answers
    first_refused = answers.index(NOT_DURABLE)
    assert set(answers[first_refused:]) == {NOT_DURABLE}  # once full, full
    logged = [m for level, m in module.logs if level == ERROR]
    # One line per outage; the state thread's reads still succeed, so a long outage may log again.
    assert logged and all(m == "rlm_cap: database unavailable (database or disk is full); the NAS will "
                               "retransmit" for m in logged), logged
    answered_bytes = sum(1000 + i for i, answer in enumerate(answers) if answer == OK)
    engine = store.make_engine(url)
    try:
        assert counted(engine, world["service_id"]) == answered_bytes  # nothing half-stored, nothing lost
    finally:
        engine.dispose()
    assert integrity(url) == "ok"

    limit["pages"] = None  # room again; the NAS retransmits what was not answered
    module.stop()
    module.stopped = True
    again = modules(url, mode="sync")
    retried = [again.accounting(attrs, T0 + 100 + i) for i, attrs in enumerate(new_sessions(60))]
    assert retried == [OK] * 60
    engine = store.make_engine(url)
    try:
        assert counted(engine, world["service_id"]) == sum(1000 + i for i in range(60))
    finally:
        engine.dispose()


def test_journal_module_on_a_full_disk_answers_and_applies_once_there_is_room(full_disk, modules, tmp_path):
    url, world, limit = full_disk
    limit["pages"] = page_count(url) + 3
    module = modules(url, mode="journal", drain_timeout=0.5)  # the stop below cannot drain: the disk is full
    assert [module.accounting(attrs, T0 + i) for i, attrs in enumerate(new_sessions(60))] == [OK] * 60
    assert wait_for(lambda: [m for level, m in module.logs if "database or disk is full" in m], timeout=20)
    module.stop()
    module.stopped = True
    assert integrity(url) == "ok"
    engine = store.make_engine(url)
    try:
        partial = counted(engine, world["service_id"])
        assert partial < sum(1000 + i for i in range(60))  # the disk filled up before the end
    finally:
        engine.dispose()

    limit["pages"] = None
    again = modules(url, mode="journal")
    directory = Path(again.config.journal_dir)
    assert wait_for(lambda: again.applied == (again.writer.generation,
                                              journal.file_size(directory, again.writer.generation)), timeout=30)
    engine = store.make_engine(url)
    try:
        assert counted(engine, world["service_id"]) == sum(1000 + i for i in range(60))  # each byte once
    finally:
        engine.dispose()
    assert integrity(url) == "ok"


# --------------------------------------------------------------------------- full disk under the journal

CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, sys.argv[1])
    from rlm_cap.module import Config, Module
    from tests.test_module import acct
    logs = []
    module = Module(Config(db_url="mysql+pymysql://nobody:pw@127.0.0.1:1/x", mode="journal", journal_dir=sys.argv[2],
                           node="fsize", apply_interval=0.01, state_refresh=60, drain_timeout=0),
                    lambda level, message: logs.append([level, message]))
    module.start()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    answers = [module.accounting(acct("Interim-Update", f"s{i}", down=i, up=0, session_time=1), 1.8e9 + i)
               for i in range(3)]
    size = module.writer and __import__("os").fstat(module.writer._fd).st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 250, resource.RLIM_INFINITY))
    answers += [module.accounting(acct("Interim-Update", f"s{i}", down=i, up=0, session_time=1), 1.8e9 + i)
                for i in range(3, 10)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    answers.append(module.accounting(acct("Interim-Update", "s10", down=10, up=0, session_time=1), 1.8e9 + 10))
    module.stop()
    print(json.dumps({"answers": answers, "logs": logs}))
""")


def test_journal_write_on_a_full_disk_is_not_answered_and_leaves_no_fragment(tmp_path):
    directory = tmp_path / "journal"
    done = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).resolve().parent.parent), str(directory)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    answers = result["answers"]
    assert answers[:3] == [OK] * 3 and answers[-1] == OK
    refused = [i for i, answer in enumerate(answers) if answer == NOT_DURABLE]
    assert refused and all(answers[i] in (OK, NOT_DURABLE) for i in range(len(answers)))
    assert set(answers[refused[0]:-1]) == {NOT_DURABLE}  # once full, full, until there is room again
    failures = [m for level, m in result["logs"] if "journal write failed" in m]
    assert len(failures) == len(refused)
    assert all("File too large" in m or "cut short" in m for m in failures), failures
    assert all("not answering, the NAS retransmits" in m for m in failures)
    batch = journal.read_batch(directory, 1, 0, 100)
    assert batch.damaged == []  # no torn line: the refused write was taken back out
    assert [r.session_id for _, r in batch.records] == [f"s{i}" for i, a in enumerate(answers) if a == OK]
