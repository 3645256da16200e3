"""What every capctl command shares: the database, parameter types, errors, output."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from decimal import Decimal

import click
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from rlm_cap import config, store
from rlm_cap.ledger import Refused
from rlm_cap.periods import parse_time_frame
from rlm_cap.policy import parse_rate
from rlm_cap.units import parse_money, parse_size


def now() -> datetime:
    return datetime.now(timezone.utc)


def actor() -> str:
    """Who runs the command, for history rows."""
    return os.environ.get("RLM_CAP_ACTOR") or os.environ.get("USER") or "operator"


class _Parsed(click.ParamType):
    def __init__(self, name: str, parse):
        self.name, self._parse = name, parse

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


SIZE = _Parsed("size", parse_size)
MONEY = _Parsed("amount", parse_money)
TIME_FRAME = _Parsed("time frame", parse_time_frame)


def _rate(text: str) -> str:
    parse_rate(text)
    return text


RATE = _Parsed("rate", _rate)


def engine(ctx: click.Context):
    """The engine for ``--db`` / RLM_CAP_DB_URL / config file / SQLite default."""
    obj = ctx.find_root().obj
    if obj.get("engine") is None:
        obj["engine"] = store.make_engine(config.database_url(obj.get("db")))
    return obj["engine"]


def transact(work):
    """Run ``work(conn)`` in one transaction; every failure becomes a one-line error.

    The transaction rolls back on any error, so a refused command changes nothing.
    """
    ctx = click.get_current_context()
    try:
        return store.run_in_transaction(engine(ctx), work)
    except click.ClickException:
        raise
    except (Refused, ValueError, LookupError) as error:
        raise click.ClickException(str(error)) from None
    except IntegrityError as error:
        raise click.ClickException(f"that already exists or is still in use ({_reason(error)})") from None
    except (OperationalError, ProgrammingError) as error:
        reason = _reason(error)
        if "no such table" in reason or "doesn't exist" in reason:
            raise click.ClickException("the database has no rlm_cap tables yet: run `capctl db init`") from None
        raise click.ClickException(f"database error: {reason}") from None


def _reason(error) -> str:
    orig = getattr(error, "orig", error)
    args = getattr(orig, "args", ())
    return str(args[-1] if args else orig).splitlines()[0]


def need(value, what: str, hint: str):
    """``value`` or a ClickException saying what was not found and how to find it."""
    if value is None:
        raise click.ClickException(f"no {what}; {hint}")
    return value


def is_named(found, name: str, column: str = "name") -> bool:
    """Whether ``found`` (looked up by name or id) really is the row named ``name``.

    The store's finders also match a numeric text against ids, so ``plan add 2``
    must not be refused only because some other plan has id 2.
    """
    if found is None:
        return False
    value = found[column] if isinstance(found, dict) else getattr(found, column)
    row_id = found["id"] if isinstance(found, dict) else found.id
    return value == name or not (name.isdigit() and row_id == int(name))


def plan_row(conn, name: str) -> dict:
    return need(store.find_plan(conn, name), f"plan {name!r}", "see: capctl plan list")


def customer_row(conn, name: str, for_update: bool = False) -> dict:
    return need(store.find_customer(conn, name, for_update), f"customer {name!r}",
                "add one with: capctl customer add NAME")


def service_row(conn, username: str) -> dict:
    return need(store.find_service(conn, username, for_update=True), f"service {username!r}",
                "add one with: capctl service add USERNAME --customer C --plan P")


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def echo_json(data) -> None:
    click.echo(json.dumps(data, default=_default, indent=2, sort_keys=True))


def bar(used: int, size: int, width: int = 20) -> str:
    """``[#########-----------]`` for used/size."""
    filled = width if size == 0 and used else (min(used, size) * width // size if size else 0)
    return "[" + "#" * filled + "-" * (width - filled) + "]"
