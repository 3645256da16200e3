"""schema.sql (for DBAs) and store.metadata (for the code) describe the same tables.

Both are loaded into MariaDB and reflected with the same inspector, so every
column type, nullability, default, key, index and foreign key is compared as
MariaDB itself reports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from rlm_cap import store

from .conftest import MARIADB_SERVER

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"


def statements(sql: str) -> list[str]:
    without_comments = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


def describe(url: str) -> dict:
    engine = create_engine(url)
    inspector = inspect(engine)
    described = {}
    for table in sorted(inspector.get_table_names()):
        described[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"),
                         bool(c.get("autoincrement")) if c["name"] == "id" else None)
                        for c in inspector.get_columns(table)],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
            "foreign_keys": sorted((f["name"], tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"]), (f.get("options") or {}).get("ondelete"))
                                   for f in inspector.get_foreign_keys(table)),
            "options": {k: v for k, v in inspector.get_table_options(table).items()
                        if k in ("mysql_engine", "mysql_default charset", "mysql_collate")},
        }
    engine.dispose()
    return described


@pytest.fixture
def two_databases(mariadb_url):
    names = [f"rlm_cap_test_sql_{os.getpid()}", f"rlm_cap_test_meta_{os.getpid()}"]
    admin = create_engine(MARIADB_SERVER + "/")
    with admin.begin() as conn:
        for name in names:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield [f"{MARIADB_SERVER}/{name}" for name in names]
    with admin.begin() as conn:
        for name in names:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def test_schema_sql_equals_metadata_on_mariadb(two_databases):
    from_sql, from_metadata = two_databases
    engine = create_engine(from_sql)
    with engine.begin() as conn:
        for statement in statements(SCHEMA_SQL.read_text()):
            conn.exec_driver_sql(statement)
    engine.dispose()
    engine = store.make_engine(from_metadata)
    store.create_schema(engine)
    engine.dispose()

    expected, actual = describe(from_sql), describe(from_metadata)
    assert sorted(expected) == sorted(store.metadata.tables)
    for table in expected:
        assert actual[table] == expected[table], f"table {table} differs between schema.sql and store.py"


def test_radius_strings_are_stored_exactly(two_databases):
    """User-Name, Acct-Session-Id and NAS compare byte-exact: 'Bob', 'bob' and 'bob ' are three users."""
    url = two_databases[1]
    engine = store.make_engine(url)
    store.create_schema(engine)
    columns = {(t, c["name"]): c for t in ("services", "sessions")
               for c in inspect(engine).get_columns(t)}
    engine.dispose()
    for key in [("services", "username"), ("sessions", "username"), ("sessions", "acct_session_id"),
                ("sessions", "nas")]:
        assert columns[key]["type"].collation == "utf8mb4_nopad_bin", key


def test_sqlite_database_uses_wal_and_foreign_keys(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    store.create_schema(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()
