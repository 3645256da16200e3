"""All SQL of rlm_cap: the schema as SQLAlchemy Core metadata and one function per operation.

The metadata equals ``schema.sql`` (tests/test_schema.py compares them on
MariaDB). Every function takes an open ``Connection`` inside a transaction
that its caller owns (``transaction()``), so a multi-row change commits or
rolls back as one. Rows that a change reads and then writes are read with
``FOR UPDATE`` (MariaDB); SQLite transactions begin ``IMMEDIATE``, so there a
single writer holds the lock from the first statement.
"""

from __future__ import annotations

import time as _time
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterator

from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, Column, DateTime, ForeignKey, Index, Integer, MetaData,
    Numeric, PrimaryKeyConstraint, SmallInteger, String, Table, Text, Time,
    TypeDecorator, UniqueConstraint, and_, case, cast, create_engine, event, func, literal, or_,
    select, text, tuple_, update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from . import counters
from .periods import ALL_DAYS, DAY_NAMES, TimeFrame
from .policy import NORMAL_KINDS, Bucket, NotificationRule, Plan, TopupPlan

MYSQL = ("mysql", "mariadb")


def _unsigned(generic, mysql_type):
    return generic.with_variant(mysql_type, *MYSQL)


INT = _unsigned(Integer(), mysql.INTEGER(unsigned=True))
BIGINT = _unsigned(BigInteger(), mysql.BIGINT(unsigned=True))
# SQLite autoincrements only an INTEGER PRIMARY KEY.
BIGINT_ID = BIGINT.with_variant(Integer(), "sqlite")
TINYINT = _unsigned(SmallInteger(), mysql.TINYINT(unsigned=True))
SMALLINT = _unsigned(SmallInteger(), mysql.SMALLINT(unsigned=True))


def BINARY_STRING(length: int):
    """RADIUS strings: compared and stored byte-exact (case and accents matter)."""
    # NOPAD: MariaDB's utf8mb4_bin ignores trailing spaces, so 'alice' = 'alice ' there.
    return String(length).with_variant(mysql.VARCHAR(length, collation="utf8mb4_nopad_bin"), *MYSQL)


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: rlm_cap stores only aware times")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Money(TypeDecorator):
    """Decimal with 2 places. SQLite has no decimal type: stored there as text."""

    impl = Numeric(14, 2)
    cache_ok = True

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.impl = Numeric(14, scale)
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(14, self.scale, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = Decimal(value).quantize(self._quantum, rounding=ROUND_HALF_UP)
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value).quantize(self._quantum)


metadata = MetaData()
_TABLE_ARGS = dict(mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_unicode_ci")


def _table(name, *columns, **kwargs):
    return Table(name, metadata, *columns, **_TABLE_ARGS, **kwargs)


def _default(value: str):
    return text(value)


nas = _table(
    "nas",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("nasname", String(128), nullable=False),
    Column("shortname", String(32)),
    Column("type", String(30), server_default="other"),
    Column("ports", Integer),
    Column("secret", String(60), nullable=False, server_default="secret"),
    Column("server", String(64)),
    Column("community", String(50)),
    Column("description", String(200), server_default="RADIUS Client"),
    Column("coa_port", INT, nullable=False, server_default=_default("3799")),
    Index("ix_nas_nasname", "nasname"),
)

partners = _table(
    "partners",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    UniqueConstraint("name", name="uq_partners_name"),
)

customers = _table(
    "customers",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("email", String(254)),
    Column("phone", String(32)),
    Column("partner_id", INT, ForeignKey("partners.id", name="fk_customers_partner")),
    Column("balance", Money(), nullable=False, server_default=_default("0")),
    Column("auto_topup", Boolean, nullable=False, server_default=_default("0")),
    Column("billing_day", TINYINT),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("name", name="uq_customers_name"),
    Index("ix_customers_partner_id", "partner_id"),
)

plans = _table(
    "plans",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("monthly_limit", BIGINT),
    Column("direction", String(8), nullable=False, server_default="up+down"),
    Column("action", String(8), nullable=False, server_default="block"),
    Column("fixed_rate", String(64)),
    Column("reduce_percent", TINYINT, nullable=False, server_default=_default("0")),
    Column("normal_rate", String(64)),
    Column("bonus_limit", BIGINT, nullable=False, server_default=_default("0")),
    Column("bonus_unlimited", Boolean, nullable=False, server_default=_default("0")),
    Column("bonus_after_cap", Boolean, nullable=False, server_default=_default("0")),
    Column("rollover", Boolean, nullable=False, server_default=_default("0")),
    Column("auto_topup_plan_id", INT),
    Column("auto_topup_trigger_percent", TINYINT, nullable=False, server_default=_default("0")),
    Column("compensate", Boolean, nullable=False, server_default=_default("0")),
    Column("overuse_price_per_gb", Money(4), nullable=False, server_default=_default("0")),
    UniqueConstraint("name", name="uq_plans_name"),
)

plan_time_frames = _table(
    "plan_time_frames",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("plan_id", INT, ForeignKey("plans.id", name="fk_plan_time_frames_plan", ondelete="CASCADE"),
           nullable=False),
    Column("start_time", Time, nullable=False),
    Column("end_time", Time, nullable=False),
    Column("days", String(32), nullable=False, server_default="all"),
    Index("ix_plan_time_frames_plan_id", "plan_id"),
)

topup_plans = _table(
    "topup_plans",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("plan_id", INT, ForeignKey("plans.id", name="fk_topup_plans_plan", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(100), nullable=False),
    Column("size", BIGINT, nullable=False),
    Column("price", Money(), nullable=False),
    Column("valid_months", SMALLINT),
    Column("category", String(64), nullable=False, server_default="Top-up"),
    Column("add_to_invoice", Boolean, nullable=False, server_default=_default("0")),
    UniqueConstraint("plan_id", "name", name="uq_topup_plans_plan_name"),
)

notification_rules = _table(
    "notification_rules",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("plan_id", INT, ForeignKey("plans.id", name="fk_notification_rules_plan", ondelete="CASCADE"),
           nullable=False),
    Column("source", String(20), nullable=False),
    Column("threshold_percent", TINYINT, nullable=False, server_default=_default("0")),
    Column("channel", String(8), nullable=False, server_default="email"),
    Column("subject", String(200), nullable=False, server_default=""),
    Column("body", Text, nullable=False),
    Index("ix_notification_rules_plan_id", "plan_id"),
)

services = _table(
    "services",
    Column("id", INT, primary_key=True, autoincrement=True),
    Column("customer_id", INT, ForeignKey("customers.id", name="fk_services_customer"), nullable=False),
    Column("plan_id", INT, ForeignKey("plans.id", name="fk_services_plan"), nullable=False),
    Column("username", BINARY_STRING(253), nullable=False),
    Column("description", String(200), nullable=False, server_default=""),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("cap_state", String(16), nullable=False, server_default="ok"),
    Column("state_changed_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("username", name="uq_services_username"),
    Index("ix_services_customer_id", "customer_id"),
    Index("ix_services_plan_id", "plan_id"),
)

sessions = _table(
    "sessions",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    # RADIUS strings are at most 253 octets; the 3-column key stays under InnoDB's 3,072 bytes.
    Column("nas", BINARY_STRING(253), nullable=False),
    Column("acct_session_id", BINARY_STRING(253), nullable=False),
    Column("username", BINARY_STRING(253), nullable=False),
    Column("service_id", INT, ForeignKey("services.id", name="fk_sessions_service")),
    Column("input_total", BIGINT, nullable=False, server_default=_default("0")),
    Column("output_total", BIGINT, nullable=False, server_default=_default("0")),
    Column("counter_time", INT),
    Column("last_time", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("closed", String(16)),
    Column("framed_ip", String(45)),
    Column("nas_ip", String(45)),
    Index("ix_sessions_key", "nas", "acct_session_id", "username"),
    Index("ix_sessions_service_closed", "service_id", "closed"),
    Index("ix_sessions_nas_closed", "nas", "closed"),
)

PERIOD_SUMS = ("upload_bytes", "download_bytes", "counted_bytes", "bonus_bytes", "free_bytes", "overuse_bytes",
               "pending_overuse_bytes")


def _whole_numbers(*names: str) -> list[CheckConstraint]:
    """SQLite turns a sum beyond 2^63 - 1 into a float without a word: make it fail instead.

    (MariaDB refuses it by itself: BIGINT UNSIGNED out of range.)
    """
    return [CheckConstraint(f"typeof({name}) = 'integer'", name=f"ck_{name}_whole").ddl_if(dialect="sqlite")
            for name in names]


periods = _table(
    "periods",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("service_id", INT, ForeignKey("services.id", name="fk_periods_service"), nullable=False),
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    *(Column(name, BIGINT, nullable=False, server_default=_default("0")) for name in PERIOD_SUMS),
    UniqueConstraint("service_id", "period_start", name="uq_periods_service_start"),
    *_whole_numbers(*PERIOD_SUMS),
)

buckets = _table(
    "buckets",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("service_id", INT, ForeignKey("services.id", name="fk_buckets_service"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("size", BIGINT, nullable=False),
    Column("used", BIGINT, nullable=False, server_default=_default("0")),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime),
    Column("period_start", UTCDateTime),
    Column("origin", String(16), nullable=False),
    Column("topup_plan_id", INT),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("service_id", "kind", "period_start", name="uq_buckets_period"),
    Index("ix_buckets_service_valid", "service_id", "valid_until"),
    *_whole_numbers("size", "used"),
)

history = _table(
    "history",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("service_id", INT, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("size", BigInteger),
    Column("amount", Money()),
    Column("bucket_id", BIGINT),
    Column("actor", String(64), nullable=False),
    Column("detail", String(500), nullable=False, server_default=""),
    Index("ix_history_service_at", "service_id", "at"),
    Index("ix_history_bucket_kind", "bucket_id", "kind"),
)

settings = _table(
    "settings",
    Column("scope", String(16), nullable=False),
    Column("scope_id", INT, nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", String(1000), nullable=False),
    PrimaryKeyConstraint("scope", "scope_id", "name"),
)

transactions = _table(
    "transactions",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("customer_id", INT, ForeignKey("customers.id", name="fk_transactions_customer"), nullable=False),
    Column("service_id", INT),
    Column("at", UTCDateTime, nullable=False),
    Column("amount", Money(), nullable=False),
    Column("category", String(64), nullable=False),
    Column("description", String(500), nullable=False),
    Index("ix_transactions_customer_at", "customer_id", "at"),
)

invoice_items = _table(
    "invoice_items",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("customer_id", INT, ForeignKey("customers.id", name="fk_invoice_items_customer"), nullable=False),
    Column("service_id", INT),
    Column("at", UTCDateTime, nullable=False),
    Column("amount", Money(), nullable=False),
    Column("category", String(64), nullable=False),
    Column("description", String(500), nullable=False),
    Column("invoiced_at", UTCDateTime),
    Index("ix_invoice_items_customer", "customer_id", "invoiced_at"),
)

actions = _table(
    "actions",
    Column("id", BIGINT_ID, primary_key=True, autoincrement=True),
    Column("service_id", INT, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("rate", String(64)),
    Column("size", BIGINT, nullable=False, server_default=_default("0")),
    Column("rule_id", INT),
    Column("dedupe_key", String(191)),
    Column("status", String(12), nullable=False, server_default="pending"),
    Column("attempts", SMALLINT, nullable=False, server_default=_default("0")),
    Column("due_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("claimed_by", String(64)),
    Column("result", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    UniqueConstraint("dedupe_key", name="uq_actions_dedupe_key"),
    Index("ix_actions_status_due", "status", "due_at"),
    Index("ix_actions_service_id", "service_id"),
)

journal_positions = _table(
    "journal_positions",
    Column("node", String(64), primary_key=True),
    Column("journal", String(255), nullable=False),
    Column("position", BIGINT, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)


# --------------------------------------------------------------------------- engine

def make_engine(url: str, **kwargs) -> Engine:
    """An engine for a SQLAlchemy URL, tuned for rlm_cap.

    SQLite: WAL, a 30 s busy timeout, foreign keys on, and transactions that
    begin IMMEDIATE (one writer at a time, no lock upgrade deadlocks).
    MariaDB/MySQL (``mysql+pymysql://``): utf8mb4, connect/read/write timeouts
    always set (a stuck query must not hold FreeRADIUS's module lock), READ
    COMMITTED, connections checked before use.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON",
                           "synchronous=NORMAL"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "handle_error")
        def _sqlite_readonly(context):
            # SQLite opens a file it may not write read-only and keeps it so: drop
            # that connection, or writes fail after the file is writable again.
            if "readonly database" in str(context.original_exception):
                context.is_disconnect = True

        return engine
    connect_args = {"charset": "utf8mb4", "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}
    connect_args.update(kwargs.pop("connect_args", {}))
    if parsed.get_backend_name() not in MYSQL:
        connect_args = kwargs.pop("connect_args", {})
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True, pool_recycle=3600,
                         isolation_level="READ COMMITTED", **kwargs)


def create_schema(engine: Engine) -> None:
    metadata.create_all(engine)


_RETRYABLE_MYSQL = {1205, 1213}  # lock wait timeout, deadlock


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "args", [None])[0]
    return code in _RETRYABLE_MYSQL


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One database transaction: commits on success, rolls back on any error."""
    with engine.begin() as conn:
        yield conn


def run_in_transaction(engine: Engine, work, retries: int = 5, before_retry=None):
    """Run ``work(conn)`` in a transaction, again after a deadlock or lock timeout.

    ``before_retry()`` runs before each new attempt: whatever the caller keeps
    in memory about rows the rolled-back attempt wrote (cached ids) must go.
    """
    for attempt in range(retries):
        try:
            with engine.begin() as conn:
                return work(conn)
        except (OperationalError, DBAPIError) as error:
            if attempt == retries - 1 or not _retryable(error):
                raise
            if before_retry is not None:
                before_retry()
            _time.sleep(0.01 * 2**attempt)


def _insert_ignore(table: Table):
    """INSERT that skips rows a unique key already holds (MariaDB/MySQL IGNORE, SQLite OR IGNORE)."""
    return table.insert().prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb") \
        .prefix_with("OR IGNORE", dialect="sqlite")


def insert_ignore(conn: Connection, table: Table, values: dict) -> int:
    """INSERT that does nothing when a unique key already holds the row; rows inserted."""
    return conn.execute(_insert_ignore(table).values(**values)).rowcount


def _one(conn: Connection, statement):
    row = conn.execute(statement).mappings().first()
    return dict(row) if row is not None else None


# --------------------------------------------------------------------------- plans

PLAN_FIELDS = tuple(c.name for c in plans.columns if c.name != "id")


def add_plan(conn: Connection, **values) -> int:
    return conn.execute(plans.insert().values(**values)).inserted_primary_key[0]


def update_plan(conn: Connection, plan_id: int, **values) -> None:
    if values:
        conn.execute(update(plans).where(plans.c.id == plan_id).values(**values))


def find_plan(conn: Connection, name_or_id: str | int) -> dict | None:
    where = plans.c.name == str(name_or_id)
    if str(name_or_id).isdigit():
        where = or_(where, plans.c.id == int(name_or_id))
    return _one(conn, select(plans).where(where).order_by(plans.c.name != str(name_or_id)))


def list_plans(conn: Connection) -> list[dict]:
    return [dict(r) for r in conn.execute(select(plans).order_by(plans.c.name)).mappings()]


def set_time_frames(conn: Connection, plan_id: int, frames: list[TimeFrame]) -> None:
    conn.execute(plan_time_frames.delete().where(plan_time_frames.c.plan_id == plan_id))
    for frame in frames:
        days = "all" if frame.days == ALL_DAYS else ",".join(DAY_NAMES[d] for d in sorted(frame.days))
        conn.execute(plan_time_frames.insert().values(plan_id=plan_id, start_time=frame.start,
                                                      end_time=frame.end, days=days))


def time_frames(conn: Connection, plan_id: int) -> tuple[TimeFrame, ...]:
    rows = conn.execute(select(plan_time_frames).where(plan_time_frames.c.plan_id == plan_id)
                        .order_by(plan_time_frames.c.id)).mappings()
    return tuple(TimeFrame(r["start_time"], r["end_time"],
                           ALL_DAYS if r["days"] == "all"
                           else frozenset(DAY_NAMES.index(d) for d in r["days"].split(",")))
                 for r in rows)


def _topup_plan(row: dict) -> TopupPlan:
    return TopupPlan(id=row["id"], name=row["name"], size=row["size"], price=row["price"],
                     valid_months=row["valid_months"], category=row["category"],
                     add_to_invoice=bool(row["add_to_invoice"]))


def load_plan(conn: Connection, plan_id: int) -> Plan:
    row = _one(conn, select(plans).where(plans.c.id == plan_id))
    if row is None:
        raise LookupError(f"no plan with id {plan_id}")
    auto = None
    if row["auto_topup_plan_id"] is not None:
        auto_row = _one(conn, select(topup_plans).where(topup_plans.c.id == row["auto_topup_plan_id"]))
        auto = _topup_plan(auto_row) if auto_row else None
    return Plan(
        id=row["id"], name=row["name"], monthly_limit=row["monthly_limit"], direction=row["direction"],
        action=row["action"], fixed_rate=row["fixed_rate"], reduce_percent=row["reduce_percent"],
        normal_rate=row["normal_rate"], bonus_limit=row["bonus_limit"],
        bonus_unlimited=bool(row["bonus_unlimited"]), bonus_after_cap=bool(row["bonus_after_cap"]),
        time_frames=time_frames(conn, plan_id), rollover=bool(row["rollover"]), auto_topup_plan=auto,
        auto_topup_trigger_percent=row["auto_topup_trigger_percent"], compensate=bool(row["compensate"]),
        overuse_price_per_gb=row["overuse_price_per_gb"])


# --------------------------------------------------------------------------- top-up plans, notification rules

def add_topup_plan(conn: Connection, plan_id: int, name: str, size: int, price: Decimal,
                   valid_months: int | None = None, category: str = "Top-up",
                   add_to_invoice: bool = False) -> int:
    return conn.execute(topup_plans.insert().values(
        plan_id=plan_id, name=name, size=size, price=price, valid_months=valid_months,
        category=category, add_to_invoice=add_to_invoice)).inserted_primary_key[0]


def list_topup_plans(conn: Connection, plan_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(topup_plans).where(topup_plans.c.plan_id == plan_id).order_by(topup_plans.c.size)).mappings()]


def find_topup_plan(conn: Connection, plan_id: int, name_or_id: str) -> TopupPlan | None:
    where = topup_plans.c.name == str(name_or_id)
    if str(name_or_id).isdigit():
        where = or_(where, topup_plans.c.id == int(name_or_id))
    row = _one(conn, select(topup_plans).where(topup_plans.c.plan_id == plan_id, where)
               .order_by(topup_plans.c.name != str(name_or_id)))
    return _topup_plan(row) if row else None


def copy_topup_plans(conn: Connection, from_plan: int, to_plan: int) -> int:
    """Copy top-up plans that the target plan does not have yet (by name)."""
    have = {r["name"] for r in list_topup_plans(conn, to_plan)}
    copied = 0
    for row in list_topup_plans(conn, from_plan):
        if row["name"] not in have:
            add_topup_plan(conn, to_plan, row["name"], row["size"], row["price"], row["valid_months"],
                           row["category"], bool(row["add_to_invoice"]))
            copied += 1
    return copied


def add_notification_rule(conn: Connection, plan_id: int, source: str, threshold_percent: int,
                          channel: str, subject: str, body: str) -> int:
    return conn.execute(notification_rules.insert().values(
        plan_id=plan_id, source=source, threshold_percent=threshold_percent, channel=channel,
        subject=subject, body=body)).inserted_primary_key[0]


def list_notification_rules(conn: Connection, plan_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(notification_rules).where(notification_rules.c.plan_id == plan_id)
        .order_by(notification_rules.c.id)).mappings()]


def load_notification_rules(conn: Connection, plan_id: int) -> tuple[NotificationRule, ...]:
    return tuple(NotificationRule(r["id"], r["source"], r["threshold_percent"], r["channel"],
                                  r["subject"], r["body"]) for r in list_notification_rules(conn, plan_id))


def copy_notification_rules(conn: Connection, from_plan: int, to_plan: int) -> int:
    """Copy rules the target plan does not have yet (copying twice adds nothing)."""
    fields = ("source", "threshold_percent", "channel", "subject", "body")
    have = {tuple(r[f] for f in fields) for r in list_notification_rules(conn, to_plan)}
    copied = 0
    for r in list_notification_rules(conn, from_plan):
        if tuple(r[f] for f in fields) not in have:
            add_notification_rule(conn, to_plan, *(r[f] for f in fields))
            copied += 1
    return copied


# --------------------------------------------------------------------------- partners, customers, services

def ensure_partner(conn: Connection, name: str) -> int:
    insert_ignore(conn, partners, {"name": name})
    return conn.execute(select(partners.c.id).where(partners.c.name == name)).scalar_one()


def partner_name(conn: Connection, partner_id: int | None) -> str | None:
    if partner_id is None:
        return None
    return conn.execute(select(partners.c.name).where(partners.c.id == partner_id)).scalar()


def find_partner(conn: Connection, name: str) -> int | None:
    return conn.execute(select(partners.c.id).where(partners.c.name == name)).scalar()


def add_customer(conn: Connection, name: str, now: datetime, **values) -> int:
    return conn.execute(customers.insert().values(name=name, created_at=now, **values)).inserted_primary_key[0]


def update_customer(conn: Connection, customer_id: int, **values) -> None:
    if values:
        conn.execute(update(customers).where(customers.c.id == customer_id).values(**values))


def find_customer(conn: Connection, name_or_id: str | int, for_update: bool = False) -> dict | None:
    where = customers.c.name == str(name_or_id)
    if str(name_or_id).isdigit():
        where = or_(where, customers.c.id == int(name_or_id))
    statement = select(customers).where(where).order_by(customers.c.name != str(name_or_id))
    return _one(conn, statement.with_for_update() if for_update else statement)


def customers_by_id(conn: Connection, ids) -> dict[int, dict]:
    if not ids:
        return {}
    return {row["id"]: dict(row) for row in conn.execute(
        select(customers).where(customers.c.id.in_(sorted(set(ids))))).mappings()}


def add_service(conn: Connection, customer_id: int, plan_id: int, username: str, description: str,
                now: datetime, cap_state: str) -> int:
    return conn.execute(services.insert().values(
        customer_id=customer_id, plan_id=plan_id, username=username, description=description,
        cap_state=cap_state, state_changed_at=now, created_at=now)).inserted_primary_key[0]


def find_service(conn: Connection, username_or_id: str | int, for_update: bool = False) -> dict | None:
    """A service by RADIUS User-Name (exact) or, for a number that is no User-Name, by id."""
    statement = select(services).where(services.c.username == str(username_or_id))
    row = _one(conn, statement.with_for_update() if for_update else statement)
    if row is None and str(username_or_id).isdigit():
        statement = select(services).where(services.c.id == int(username_or_id))
        row = _one(conn, statement.with_for_update() if for_update else statement)
    return row


def update_service(conn: Connection, service_id: int, **values) -> None:
    conn.execute(update(services).where(services.c.id == service_id).values(**values))


def services_of_customer(conn: Connection, customer_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(services).where(services.c.customer_id == customer_id).order_by(services.c.id)).mappings()]


# --------------------------------------------------------------------------- settings

def setting_layers(conn: Connection, scopes: list[tuple[str, int | None]]) -> list[dict[str, str]]:
    """Rows of each (scope, id) as a dict, in the order given (most general first)."""
    wanted = [(scope, scope_id) for scope, scope_id in scopes if scope_id is not None]
    found = settings_of(conn, wanted)
    return [found.get(key, {}) for key in wanted]


def settings_of(conn: Connection, scopes) -> dict[tuple[str, int], dict[str, str]]:
    """Every setting of these (scope, id) pairs, by pair, in one query."""
    wanted = sorted({(scope, scope_id) for scope, scope_id in scopes if scope_id is not None})
    if not wanted:
        return {}
    found: dict[tuple[str, int], dict[str, str]] = {}
    key = tuple_(settings.c.scope, settings.c.scope_id)
    for row in conn.execute(select(settings).where(key.in_(wanted))).mappings():
        found.setdefault((row["scope"], row["scope_id"]), {})[row["name"]] = row["value"]
    return found


def set_setting(conn: Connection, scope: str, scope_id: int, name: str, value: str | None) -> None:
    """Set (or with ``None`` remove) one setting at one scope."""
    key = and_(settings.c.scope == scope, settings.c.scope_id == scope_id, settings.c.name == name)
    conn.execute(settings.delete().where(key))
    if value is not None:
        conn.execute(settings.insert().values(scope=scope, scope_id=scope_id, name=name, value=value))


# --------------------------------------------------------------------------- periods and buckets

def _bucket(row) -> Bucket:
    return Bucket(id=row["id"], kind=row["kind"], size=row["size"], used=row["used"],
                  valid_from=row["valid_from"], valid_until=row["valid_until"])


def find_period(conn: Connection, service_id: int, period_start: datetime,
                for_update: bool = False) -> dict | None:
    statement = select(periods).where(periods.c.service_id == service_id,
                                      periods.c.period_start == period_start)
    return _one(conn, statement.with_for_update() if for_update else statement)




def period_ids(conn: Connection, keys) -> dict[tuple[int, datetime], int]:
    """Ids of the periods that exist among (service_id, period_start) pairs, in one query."""
    if not keys:
        return {}
    key = tuple_(periods.c.service_id, periods.c.period_start)
    rows = conn.execute(select(periods.c.id, periods.c.service_id, periods.c.period_start)
                        .where(key.in_(sorted(keys))))
    return {(service_id, start): period_id for period_id, service_id, start in rows}


def add_period_usage(conn: Connection, period_id: int, **deltas: int) -> None:
    conn.execute(update(periods).where(periods.c.id == period_id).values(
        **{name: periods.c[name] + value for name, value in deltas.items() if value}))




def list_periods(conn: Connection, service_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(periods).where(periods.c.service_id == service_id).order_by(periods.c.period_start)).mappings()]


def add_bucket(conn: Connection, service_id: int, kind: str, size: int, valid_from: datetime,
               valid_until: datetime | None, origin: str, now: datetime, used: int = 0,
               period_start: datetime | None = None, topup_plan_id: int | None = None) -> int:
    return conn.execute(buckets.insert().values(
        service_id=service_id, kind=kind, size=size, used=used, valid_from=valid_from,
        valid_until=valid_until, origin=origin, created_at=now, period_start=period_start,
        topup_plan_id=topup_plan_id)).inserted_primary_key[0]


def period_bucket(conn: Connection, service_id: int, kind: str, period_start: datetime) -> dict | None:
    return _one(conn, select(buckets).where(buckets.c.service_id == service_id, buckets.c.kind == kind,
                                            buckets.c.period_start == period_start))


def load_buckets(conn: Connection, service_id: int, now: datetime, for_update: bool = False
                 ) -> tuple[Bucket, ...]:
    """Buckets that have not expired by ``now`` (and those starting later)."""
    statement = (select(buckets).where(buckets.c.service_id == service_id,
                                       or_(buckets.c.valid_until.is_(None), buckets.c.valid_until > now))
                 .order_by(buckets.c.id))
    if for_update:
        statement = statement.with_for_update()
    return tuple(_bucket(r) for r in conn.execute(statement).mappings())


def bucket_rows(conn: Connection, service_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        select(buckets).where(buckets.c.service_id == service_id).order_by(buckets.c.id)).mappings()]


def find_bucket(conn: Connection, bucket_id: int, for_update: bool = False) -> dict | None:
    statement = select(buckets).where(buckets.c.id == bucket_id)
    return _one(conn, statement.with_for_update() if for_update else statement)




def shrink_bucket(conn: Connection, bucket_id: int, size: int) -> None:
    conn.execute(update(buckets).where(buckets.c.id == bucket_id).values(size=size))


def topups_in(conn: Connection, service_id: int, start: datetime, end: datetime) -> dict[str, int]:
    """Top-ups applied in [start, end), counted by origin (admin, auto, portal)."""
    rows = conn.execute(select(buckets.c.origin, func.count()).where(
        buckets.c.service_id == service_id, buckets.c.kind == "topup",
        buckets.c.created_at >= start, buckets.c.created_at < end).group_by(buckets.c.origin))
    return {origin: count for origin, count in rows}


# --------------------------------------------------------------------------- sessions

def _session(row) -> counters.Session:
    return counters.Session(row["input_total"], row["output_total"], row["counter_time"],
                            row["last_time"], row["started_at"], row["closed"])








def close_nas_sessions(conn: Connection, nas_key: str) -> int:
    """Accounting-On/Off: every session of the NAS ends; its ids may be reused."""
    return conn.execute(update(sessions).where(
        sessions.c.nas == nas_key,
        or_(sessions.c.closed.is_(None), sessions.c.closed != counters.CLOSED_BY_NAS_RESTART))
        .values(closed=counters.CLOSED_BY_NAS_RESTART)).rowcount


def open_sessions(conn: Connection, service_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(select(sessions).where(
        sessions.c.service_id == service_id, sessions.c.closed.is_(None))).mappings()]


def session_rows(conn: Connection, username: str | None = None) -> list[dict]:
    statement = select(sessions).order_by(sessions.c.id)
    if username is not None:
        statement = statement.where(sessions.c.username == username)
    return [dict(r) for r in conn.execute(statement).mappings()]


# --------------------------------------------------------------------------- history, money, outbox

def add_history(conn: Connection, service_id: int, at: datetime, kind: str, actor: str,
                detail: str = "", size: int | None = None, amount: Decimal | None = None,
                bucket_id: int | None = None) -> None:
    conn.execute(history.insert().values(service_id=service_id, at=at, kind=kind, actor=actor,
                                         detail=detail[:500], size=size, amount=amount,
                                         bucket_id=bucket_id))


def list_history(conn: Connection, service_id: int, start: datetime | None = None,
                 end: datetime | None = None) -> list[dict]:
    statement = select(history).where(history.c.service_id == service_id)
    if start is not None:
        statement = statement.where(history.c.at >= start)
    if end is not None:
        statement = statement.where(history.c.at < end)
    return [dict(r) for r in conn.execute(statement.order_by(history.c.at, history.c.id)).mappings()]


def add_transaction(conn: Connection, customer_id: int, service_id: int | None, at: datetime,
                    amount: Decimal, category: str, description: str) -> None:
    """Money on the account (+ payment, - charge); the balance moves in the same statement set."""
    row = find_customer(conn, customer_id, for_update=True)
    conn.execute(transactions.insert().values(customer_id=customer_id, service_id=service_id, at=at,
                                              amount=amount, category=category,
                                              description=description[:500]))
    conn.execute(update(customers).where(customers.c.id == customer_id)
                 .values(balance=row["balance"] + amount))


def add_invoice_item(conn: Connection, customer_id: int, service_id: int | None, at: datetime,
                     amount: Decimal, category: str, description: str) -> None:
    conn.execute(invoice_items.insert().values(customer_id=customer_id, service_id=service_id, at=at,
                                               amount=amount, category=category,
                                               description=description[:500]))


def list_transactions(conn: Connection, customer_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(select(transactions).where(
        transactions.c.customer_id == customer_id).order_by(transactions.c.id)).mappings()]


def list_invoice_items(conn: Connection, customer_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(select(invoice_items).where(
        invoice_items.c.customer_id == customer_id).order_by(invoice_items.c.id)).mappings()]


def add_action(conn: Connection, service_id: int, kind: str, now: datetime, rate: str | None = None,
               size: int = 0, rule_id: int | None = None, dedupe_key: str | None = None) -> bool:
    """Queue an action for the enforcer; False if ``dedupe_key`` was queued before."""
    values = dict(service_id=service_id, kind=kind, rate=rate, size=size, rule_id=rule_id,
                  dedupe_key=dedupe_key, due_at=now, created_at=now)
    if dedupe_key is None:
        conn.execute(actions.insert().values(**values))
        return True
    return insert_ignore(conn, actions, values) == 1


def list_actions(conn: Connection, service_id: int | None = None) -> list[dict]:
    statement = select(actions).order_by(actions.c.id)
    if service_id is not None:
        statement = statement.where(actions.c.service_id == service_id)
    return [dict(r) for r in conn.execute(statement).mappings()]


def sent_rule_ids(conn: Connection, service_id: int, period_start: datetime) -> set[int]:
    """Notification rules already queued for this service in this period."""
    prefix = f"notify:{service_id}:{period_start:%Y%m%dT%H%M%S}:"
    rows = conn.execute(select(actions.c.rule_id).where(
        actions.c.service_id == service_id, actions.c.kind == "notify",
        actions.c.dedupe_key.like(prefix + "%")))
    return {r for (r,) in rows}


def notify_key(service_id: int, period_start: datetime, rule_id: int) -> str:
    return f"notify:{service_id}:{period_start:%Y%m%dT%H%M%S}:{rule_id}"


# --------------------------------------------------------------------------- journal mode, module caches

def journal_position(conn: Connection, node: str) -> tuple[str, int] | None:
    row = _one(conn, select(journal_positions).where(journal_positions.c.node == node))
    return (row["journal"], row["position"]) if row else None


def set_journal_position(conn: Connection, node: str, journal: str, position: int, now: datetime) -> None:
    """Record how far the node's journal is applied (in the batch's own transaction)."""
    values = dict(journal=journal, position=position, updated_at=now)
    changed = conn.execute(update(journal_positions).where(journal_positions.c.node == node)
                           .values(**values)).rowcount
    if not changed:
        conn.execute(journal_positions.insert().values(node=node, **values))


def capped_services(conn: Connection) -> list[dict]:
    """User-Name and plan action of every capped service: what authorize needs."""
    statement = (select(services.c.username, plans.c.action, plans.c.fixed_rate, plans.c.normal_rate,
                        plans.c.reduce_percent)
                 .join(plans, plans.c.id == services.c.plan_id)
                 .where(services.c.cap_state == "capped"))
    return [dict(r) for r in conn.execute(statement).mappings()]


def remaining_data(conn: Connection, now: datetime) -> dict[str, int]:
    """User-Name → normal data left now (monthly, rollover, top-ups), for services with a CAP."""
    left = case((buckets.c.size > buckets.c.used, buckets.c.size - buckets.c.used), else_=0)
    statement = (select(services.c.username, func.sum(left))
                 .join(buckets, buckets.c.service_id == services.c.id)
                 .where(buckets.c.kind.in_(NORMAL_KINDS), buckets.c.valid_from <= now,
                        or_(buckets.c.valid_until.is_(None), buckets.c.valid_until > now))
                 .group_by(services.c.username))
    return {username: int(total or 0) for username, total in conn.execute(statement)}


# --------------------------------------------------------------------------- set-based accounting (one batch)

def services_by_username(conn: Connection, usernames) -> dict[str, dict]:
    """Services of these User-Names, locked (in index order, the same on every node)."""
    if not usernames:
        return {}
    rows = conn.execute(select(services).where(services.c.username.in_(sorted(usernames)))
                        .order_by(services.c.username).with_for_update()).mappings()
    return {row["username"]: dict(row) for row in rows}


def latest_sessions(conn: Connection, keys) -> dict[tuple[str, str, str], tuple[int, counters.Session]]:
    """The newest session row of each (nas, acct_session_id, username) key, locked."""
    if not keys:
        return {}
    key = tuple_(sessions.c.nas, sessions.c.acct_session_id, sessions.c.username)
    rows = conn.execute(select(sessions).where(key.in_(sorted(keys))).order_by(sessions.c.id)
                        .with_for_update()).mappings()
    return {(r["nas"], r["acct_session_id"], r["username"]): (r["id"], _session(r)) for r in rows}


def insert_sessions(conn: Connection, rows: list[dict]) -> None:
    if rows:
        conn.execute(sessions.insert(), rows)


_CASE_ROWS = 100  # the database tries a CASE's WHENs one by one for each row: keep n² small


def _update_by_id(conn: Connection, table: Table, columns: dict[str, dict[int, object]],
                  increment: bool = False) -> None:
    """``SET column = CASE id WHEN ? THEN ? ... END`` for many rows by id, 100 rows a statement.

    Written as SQL text with bound parameters because SQLAlchemy's ``case()``
    builds and compiles a new construct per batch (measured: a third of the
    applier's time at 500 rows). ``increment`` adds to the column instead.
    A column's rows not in its mapping keep their value (or add 0).
    """
    ids = sorted({row_id for values in columns.values() for row_id in values})
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    quote = conn.dialect.identifier_preparer.quote
    processors = {name: table.c[name].type.bind_processor(conn.dialect) or (lambda value: value)
                  for name in columns}
    for first in range(0, len(ids), _CASE_ROWS):
        chunk = ids[first:first + _CASE_ROWS]
        assignments, params = [], []
        for name, values in columns.items():
            present = [row_id for row_id in chunk if row_id in values]
            if not present:
                continue
            column, process = quote(name), processors[name]
            whens = " ".join([f"WHEN {mark} THEN {mark}"] * len(present))
            for row_id in present:
                params += (row_id, process(values[row_id]))
            otherwise = "0" if increment else column
            assignments.append(f"{column} = {column + ' + ' if increment else ''}"
                               f"CASE {quote('id')} {whens} ELSE {otherwise} END")
        sql = (f"UPDATE {quote(table.name)} SET {', '.join(assignments)} "
               f"WHERE {quote('id')} IN ({', '.join([mark] * len(chunk))})")
        conn.exec_driver_sql(sql, tuple(params) + tuple(chunk))


def update_sessions(conn: Connection, changes: dict[int, tuple[counters.Session, str | None]]) -> None:
    """Write each session's final state of a batch, in one statement."""
    if not changes:
        return
    sessions_of = {i: changes[i][0] for i in changes}
    _update_by_id(conn, sessions, {
        "input_total": {i: s.input_total for i, s in sessions_of.items()},
        "output_total": {i: s.output_total for i, s in sessions_of.items()},
        "counter_time": {i: s.counter_time for i, s in sessions_of.items()},
        "last_time": {i: s.last_time for i, s in sessions_of.items()},
        "closed": {i: s.closed for i, s in sessions_of.items()},
        "framed_ip": {i: framed for i, (_, framed) in changes.items() if framed},
    })


def buckets_of(conn: Connection, service_ids, since: datetime) -> dict[int, tuple[Bucket, ...]]:
    """Unexpired buckets (as of ``since``) of several services, locked, in one query."""
    result: dict[int, list[Bucket]] = {sid: [] for sid in service_ids}
    if not service_ids:
        return {}
    rows = conn.execute(select(buckets).where(
        buckets.c.service_id.in_(sorted(service_ids)),
        or_(buckets.c.valid_until.is_(None), buckets.c.valid_until > since))
        .order_by(buckets.c.id).with_for_update()).mappings()
    for row in rows:
        result[row["service_id"]].append(_bucket(row))
    return {sid: tuple(found) for sid, found in result.items()}


def add_many(conn: Connection, table: Table, deltas: dict[int, dict[str, int]]) -> None:
    """``column += delta`` for many rows by id, one statement (buckets.used, periods.*_bytes)."""
    columns: dict[str, dict[int, int]] = {}
    for row_id, changes in deltas.items():
        for name, amount in changes.items():
            if amount:
                columns.setdefault(name, {})[row_id] = amount
    _update_by_id(conn, table, columns, increment=True)


# --------------------------------------------------------------------------- the outbox (cap-enforcer)

STATE_ACTIONS = ("block", "fixed", "reduce", "restore")  # change the session on the NAS; only the newest counts


def claim_actions(conn: Connection, worker: str, now: datetime, lease_until: datetime, limit: int,
                  notifications: bool) -> list[dict]:
    """Lease up to ``limit`` due actions to ``worker``.

    On MariaDB/MySQL the rows are picked ``FOR UPDATE SKIP LOCKED``: two
    enforcers never pick the same one; on SQLite the transaction is the single
    writer. A lease that ran out (its enforcer died) makes the action due again.
    """
    kind = actions.c.kind == "notify" if notifications else actions.c.kind != "notify"
    statement = (select(actions.c.id).where(
        actions.c.status == "pending", actions.c.due_at <= now, kind,
        or_(actions.c.lease_until.is_(None), actions.c.lease_until < now))
        .order_by(actions.c.id).limit(limit))
    if conn.dialect.name in MYSQL:
        statement = statement.with_for_update(skip_locked=True)
    ids = [row_id for (row_id,) in conn.execute(statement)]
    if not ids:
        return []
    conn.execute(update(actions).where(actions.c.id.in_(ids)).values(
        lease_until=lease_until, claimed_by=worker, attempts=actions.c.attempts + 1))
    return [dict(r) for r in conn.execute(select(actions).where(actions.c.id.in_(ids))
                                          .order_by(actions.c.id)).mappings()]


def finish_action(conn: Connection, action_id: int, worker: str, status: str, result: str,
                  now: datetime) -> bool:
    """Record an outcome (done, failed, superseded); False if the lease was lost to another enforcer."""
    return conn.execute(update(actions).where(actions.c.id == action_id, actions.c.claimed_by == worker,
                                              actions.c.status == "pending")
                        .values(status=status, result=result[:500], finished_at=now, lease_until=None)).rowcount == 1


def renew_lease(conn: Connection, action_id: int, worker: str, now: datetime, until: datetime) -> bool:
    """Extend our lease just before sending; False if it ran out and another enforcer may have it."""
    return conn.execute(update(actions).where(
        actions.c.id == action_id, actions.c.claimed_by == worker, actions.c.status == "pending",
        actions.c.lease_until > now).values(lease_until=until)).rowcount == 1


def retry_action(conn: Connection, action_id: int, worker: str, due_at: datetime, result: str) -> bool:
    return conn.execute(update(actions).where(actions.c.id == action_id, actions.c.claimed_by == worker,
                                              actions.c.status == "pending")
                        .values(due_at=due_at, lease_until=None, result=result[:500])).rowcount == 1


def newer_state_action(conn: Connection, service_id: int, action_id: int) -> bool:
    """Whether a later CoA/Disconnect for the service exists: then this one is stale."""
    return conn.execute(select(func.count()).select_from(actions).where(
        actions.c.service_id == service_id, actions.c.kind.in_(STATE_ACTIONS), actions.c.id > action_id,
        actions.c.status != "superseded")).scalar() > 0


def find_nas(conn: Connection, address: str) -> dict | None:
    return _one(conn, select(nas).where(nas.c.nasname == address).order_by(nas.c.id).limit(1))


def add_nas(conn: Connection, nasname: str, secret: str, shortname: str | None = None,
            type: str = "mikrotik", coa_port: int = 3799, description: str | None = None) -> int:
    return conn.execute(nas.insert().values(nasname=nasname, secret=secret, shortname=shortname, type=type,
                                            coa_port=coa_port, description=description)).inserted_primary_key[0]


def list_nas(conn: Connection) -> list[dict]:
    return [dict(r) for r in conn.execute(select(nas).order_by(nas.c.nasname)).mappings()]


def close_session(conn: Connection, session_id: int, how: str) -> None:
    conn.execute(update(sessions).where(sessions.c.id == session_id, sessions.c.closed.is_(None))
                 .values(closed=how))


def close_stale_sessions(conn: Connection, before: datetime) -> int:
    """Open sessions with no update since ``before`` (the NAS lost them) are closed."""
    return conn.execute(update(sessions).where(sessions.c.closed.is_(None), sessions.c.last_time < before)
                        .values(closed=counters.CLOSED_AS_STALE)).rowcount


def notification_rule(conn: Connection, rule_id: int) -> dict | None:
    return _one(conn, select(notification_rules).where(notification_rules.c.id == rule_id))


# --------------------------------------------------------------------------- periods, set-based (close, rollover)

def _insert_ignore_from(table: Table, columns: list[str], query):
    return _insert_ignore(table).from_select(columns, query)


def has_later_period(conn: Connection, service_id: int, start: datetime) -> bool:
    return conn.execute(select(func.count()).select_from(periods).where(
        periods.c.service_id == service_id, periods.c.period_start > start)).scalar() > 0


def open_periods(conn: Connection, service_ids: list[int], start: datetime, end: datetime,
                 previous_start: datetime, rollover_until: datetime, now: datetime, restore: bool = True) -> None:
    """Open the period [start, end) for many services in a few statements.

    Per service: the period row; the monthly bucket (plans with a CAP) and the
    bonus bucket (a bonus limit); with rollover, the unused monthly data of
    the period that began at ``previous_start`` as a bucket valid until
    ``rollover_until``, with history; a capped service restored (outbox +
    history). A period is closed once a later one exists: nothing to write.
    Every insert is keyed, so running it again, or on two enforcers at once,
    changes nothing the second time. Services are grouped by plan in Python
    (plans are few) so that every statement is driven by a key: a join to
    plans let MariaDB scan all services once per chunk.
    """
    plan_rows = {row["id"]: row for row in conn.execute(select(plans)).mappings()}
    for first in range(0, len(service_ids), 2000):
        ids = service_ids[first:first + 2000]
        by_plan: dict[int, list[int]] = {}
        capped: list[tuple[int, str | None]] = []
        # Services first, locked in User-Name order as the applier locks them:
        # inserting periods first and then updating services made a lock cycle.
        for sid, plan_id, state in conn.execute(select(services.c.id, services.c.plan_id, services.c.cap_state)
                                                .where(services.c.id.in_(ids)).order_by(services.c.username)
                                                .with_for_update()):
            by_plan.setdefault(plan_id, []).append(sid)
            if restore and state == "capped" and plan_rows[plan_id]["monthly_limit"] is not None:
                capped.append((sid, plan_rows[plan_id]["normal_rate"]))
        # INSERT ... SELECT: the rows are made in the database, not sent one by one.
        conn.execute(_insert_ignore_from(periods, ["service_id", "period_start", "period_end"], select(
            services.c.id, literal(start, UTCDateTime), literal(end, UTCDateTime))
            .where(services.c.id.in_(ids))))
        for plan_id, sids in by_plan.items():
            plan = plan_rows[plan_id]
            if plan["monthly_limit"] is None:
                continue
            sizes = [("monthly", plan["monthly_limit"])]
            if plan["bonus_limit"] and not plan["bonus_unlimited"]:
                sizes.append(("bonus", plan["bonus_limit"]))
            for kind, size in sizes:
                conn.execute(_insert_ignore_from(buckets, [
                    "service_id", "kind", "size", "used", "valid_from", "valid_until", "period_start", "origin",
                    "created_at"], select(
                    services.c.id, literal(kind), literal(size, BIGINT), literal(0), literal(start, UTCDateTime),
                    literal(end, UTCDateTime), literal(start, UTCDateTime), literal("plan"),
                    literal(now, UTCDateTime)).where(services.c.id.in_(sids))))
        rolling = [sid for plan_id, sids in by_plan.items() if plan_rows[plan_id]["rollover"]
                   and plan_rows[plan_id]["monthly_limit"] is not None for sid in sids]
        if rolling:
            columns = ["service_id", "kind", "size", "used", "valid_from", "valid_until", "period_start",
                       "origin", "created_at"]
            conn.execute(_insert_ignore_from(buckets, columns, select(
                buckets.c.service_id, literal("rollover"), buckets.c.size - buckets.c.used, literal(0),
                literal(start, UTCDateTime), literal(rollover_until, UTCDateTime), literal(start, UTCDateTime),
                literal("system"), literal(now, UTCDateTime))
                .where(buckets.c.service_id.in_(rolling), buckets.c.kind == "monthly",
                       buckets.c.period_start == previous_start, buckets.c.size > buckets.c.used)))
            detail = (f"unused monthly data of the period from {previous_start:%Y-%m-%d}, "
                      f"valid until {rollover_until:%Y-%m-%d}")
            conn.execute(history.insert().from_select(
                ["service_id", "at", "kind", "size", "bucket_id", "actor", "detail"],
                select(buckets.c.service_id, literal(start, UTCDateTime), literal("rollover"), buckets.c.size,
                       buckets.c.id, literal("system"), literal(detail))
                .where(buckets.c.service_id.in_(rolling), buckets.c.kind == "rollover",
                       buckets.c.period_start == start, buckets.c.created_at == now)))
        if capped:
            suffix = f":{start:%Y%m%dT%H%M%S}"
            conn.execute(_insert_ignore(actions), [dict(service_id=sid, kind="restore", rate=rate, size=0,
                                                        dedupe_key=f"restore:{sid}{suffix}", due_at=now,
                                                        created_at=now) for sid, rate in capped])
            restored = conn.execute(update(services).where(
                services.c.id.in_([sid for sid, _ in capped]), services.c.cap_state == "capped")
                .values(cap_state="ok", state_changed_at=now)).rowcount
            if restored:
                conn.execute(history.insert(), [dict(service_id=sid, at=now, kind="restore", actor="system",
                                                     detail="new period: data available again")
                                                for sid, _ in capped])


def services_due_for_a_period(conn: Connection, now: datetime) -> list[dict]:
    """Services whose newest period ended by ``now``, with what decides their next one."""
    latest = (select(periods.c.service_id, func.max(periods.c.period_end).label("ended"))
              .group_by(periods.c.service_id).subquery())
    statement = (select(services.c.id, services.c.plan_id, services.c.customer_id, customers.c.partner_id,
                        customers.c.billing_day)
                 .join(latest, latest.c.service_id == services.c.id)
                 .join(customers, customers.c.id == services.c.customer_id)
                 .where(latest.c.ended <= now))
    return [dict(r) for r in conn.execute(statement).mappings()]


def settings_named(conn: Connection, names) -> dict[tuple[str, int], dict[str, str]]:
    """Every row of these settings, by (scope, scope_id)."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for row in conn.execute(select(settings).where(settings.c.name.in_(list(names)))).mappings():
        found.setdefault((row["scope"], row["scope_id"]), {})[row["name"]] = row["value"]
    return found


def record_expiries(conn: Connection, now: datetime) -> int:
    """History rows for top-up, rollover, transfer and bonus data that expired unused (once each)."""
    earlier = select(history.c.id).where(history.c.bucket_id == buckets.c.id, history.c.kind == "expiry")
    return conn.execute(history.insert().from_select(
        ["service_id", "at", "kind", "size", "bucket_id", "actor", "detail"],
        select(buckets.c.service_id, buckets.c.valid_until, literal("expiry"),
               cast(buckets.c.used, BigInteger) - cast(buckets.c.size, BigInteger),  # UNSIGNED - UNSIGNED < 0 fails
               buckets.c.id, literal("system"), literal("unused data expired"))
        .where(buckets.c.valid_until <= now, buckets.c.size > buckets.c.used, buckets.c.origin != "plan",
               ~earlier.exists()))).rowcount
