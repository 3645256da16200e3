"""Shared helpers for the capctl CLI tests (tests/test_cli_*.py).

Every command runs through click's CliRunner against the ``db_url`` fixture's
database; the engine the command opened is disposed after each call so that
MariaDB connections do not pile up.
"""

from __future__ import annotations

import json
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import count

from click.testing import CliRunner, Result
from sqlalchemy import select

from cli.main import capctl
from rlm_cap import counters, ledger, store

GB = 10**9
MB = 10**6

PLAN = "Home 10GB"
CUSTOMER = "alice"
SERVICE = "alice@isp"


_ENGINES: dict[tuple[str, str], object] = {}


def engine_for(db_url: str, role: str = "cli"):
    """One engine per (URL, role), kept between calls and tests.

    Opening a MariaDB connection costs ~0.1 s here, so the CLI gets a pooled
    engine for ``--db`` instead of opening its own each call; the helpers that
    read the database (``connect``, ``snapshot``) use a separate engine, never
    the CLI's connections.
    """
    key = (db_url, role)
    if key not in _ENGINES:
        for other in [k for k in _ENGINES if k[0] != db_url and k[0].startswith("sqlite")]:
            _ENGINES.pop(other).dispose()  # the previous test's SQLite file
        _ENGINES[key] = store.make_engine(db_url)
    return _ENGINES[key]


def invoke(db_url: str, *args, env: dict | None = None, input: str | None = None,
           fresh: bool = False) -> Result:
    """``capctl --db URL ARGS``; ``fresh``: let capctl open the database itself from the URL."""
    obj: dict = {} if fresh else {"engine": engine_for(db_url)}
    try:
        return CliRunner(env=env).invoke(capctl, ["--db", db_url, *map(str, args)], obj=obj, input=input)
    finally:
        if fresh and obj.get("engine") is not None:
            obj["engine"].dispose()


def _describe(args, result: Result) -> str:
    text = f"capctl {' '.join(map(str, args))} -> exit {result.exit_code}\n{result.output}"
    if result.exc_info and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(*result.exc_info))
    return text


def ok(db_url: str, *args, env: dict | None = None, input: str | None = None, fresh: bool = False) -> str:
    """Run a command that must succeed; its output."""
    result = invoke(db_url, *args, env=env, input=input, fresh=fresh)
    assert result.exit_code == 0 and result.exception is None, _describe(args, result)
    return result.output


def ok_json(db_url: str, *args, env: dict | None = None):
    return json.loads(ok(db_url, *args, "--json", env=env))


def fails(db_url: str, *args, env: dict | None = None, input: str | None = None, fresh: bool = False) -> str:
    """Run a command that must fail cleanly: non-zero exit, no traceback, one 'Error:' line.

    Returns that line.
    """
    result = invoke(db_url, *args, env=env, input=input, fresh=fresh)
    assert result.exit_code != 0, _describe(args, result)
    # An uncaught exception would be in result.exception (CliRunner swallows the traceback).
    assert isinstance(result.exception, SystemExit), _describe(args, result)
    assert "Traceback" not in result.output, _describe(args, result)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, _describe(args, result)
    assert len(errors[0]) > len("Error: "), _describe(args, result)
    if result.exit_code == 1:  # a refusal (not a usage error, which also prints the usage line)
        assert result.output.splitlines() == errors, _describe(args, result)
    return errors[0]


@contextmanager
def connect(db_url: str):
    """A connection in one transaction (committed at the end), not one of the CLI's."""
    with engine_for(db_url, "test").begin() as conn:
        yield conn


def snapshot(db_url: str) -> dict[str, list[tuple]]:
    """Every row of every rlm_cap table, in primary-key order (committed data only)."""
    with engine_for(db_url, "snapshot").connect() as conn:
        return {table.name: [tuple(row) for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns))]
                for table in store.metadata.sorted_tables}


def history(db_url: str, service: str = SERVICE) -> list[dict]:
    """The whole history of a service, via ``capctl history --all --json``."""
    return ok_json(db_url, "history", service, "--all")


def buckets(db_url: str, service: str = SERVICE) -> list[dict]:
    with connect(db_url) as conn:
        return store.bucket_rows(conn, store.find_service(conn, service)["id"])


def customer(db_url: str, name: str = CUSTOMER) -> dict:
    with connect(db_url) as conn:
        row = store.find_customer(conn, name)
        return {**row, "transactions": store.list_transactions(conn, row["id"]),
                "invoice_items": store.list_invoice_items(conn, row["id"])}


_sessions = count(1)


def feed(db_url: str, username: str, download: int, upload: int = 0, at: datetime | None = None):
    """Account ``download``/``upload`` bytes for ``username`` as one new session's Interim-Update."""
    record = counters.AccountingRecord(
        counters.INTERIM, "nas1", f"sess-{next(_sessions)}", username, at or datetime.now(timezone.utc),
        input_octets=upload % counters.GIGAWORD, input_gigawords=upload // counters.GIGAWORD,
        output_octets=download % counters.GIGAWORD, output_gigawords=download // counters.GIGAWORD)
    with connect(db_url) as conn:
        applied = ledger.apply_record(conn, record)
    assert applied.service_id is not None, applied
    return applied


def make_world(db_url: str, plan_args=(), customer_args=(), topup_plans=(("5GB", "5GB", "10"),)) -> None:
    """Plan 'Home 10GB' (reduce 50 % of 10M/20M), its top-up plans, customer alice
    (balance 50) and her service alice@isp ('Home internet')."""
    ok(db_url, "plan", "add", PLAN, "--limit", "10GB", "--action", "reduce", "--reduce-percent", "50",
       "--rate", "10M/20M", *plan_args)
    for name, size, price in topup_plans:
        ok(db_url, "topup-plan", "add", PLAN, name, "--size", size, "--price", price)
    ok(db_url, "customer", "add", CUSTOMER, "--balance", "50", *customer_args)
    ok(db_url, "service", "add", SERVICE, "--customer", CUSTOMER, "--plan", PLAN, "--description", "Home internet")
