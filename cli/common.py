"""What every capctl command shares: the database, parameter types, errors, output."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from decimal import Decimal

import click
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, ProgrammingError

from rlm_cap import config, store
from rlm_cap.ledger import Refused
from rlm_cap.periods import parse_time_frame
from rlm_cap.policy import parse_rate
from rlm_cap.units import format_size, parse_money, parse_size

MAX_SIZE = 10**18  # 1000 PB: far above any plan, far below what a BIGINT (and sums of a few) can hold


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


def _size(text: str) -> int:
    value = parse_size(text)
    if value > MAX_SIZE:
        raise ValueError(f"size {text!r} is too large (at most {format_size(MAX_SIZE)})")
    return value


SIZE = _Parsed("size", _size)

MAX_MONEY = Decimal("999999999.99")  # the money columns hold 12 digits before the point: sums stay inside


def _money(text: str) -> Decimal:
    value = parse_money(text)
    if abs(value) > MAX_MONEY:
        raise ValueError(f"amount {text!r} is too large (at most {MAX_MONEY})")
    return value


MONEY = _Parsed("amount", _money)


def utf8(value: str) -> bool:
    """False for a text with lone surrogates (bytes that were not UTF-8 on the command line)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(max_length: int, empty: bool = False) -> click.ParamType:
    """A text stored as given, refused when it does not fit its column (or is blank)."""
    def check(value: str) -> str:
        if not empty and not value.strip():
            raise ValueError("must not be empty")
        if not utf8(value):
            raise ValueError(f"not valid UTF-8: {value!r}")
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters, not {len(value)}")
        return value
    return _Parsed("text", check)


TIME_FRAME = _Parsed("time frame", parse_time_frame)


def _rate(text: str) -> str:
    parse_rate(text)
    return text


RATE = _Parsed("rate", _rate)


def engine(ctx: click.Context):
    """The engine for ``--db`` / RLM_CAP_DB_URL / config file / SQLite default."""
    obj = ctx.find_root().obj
    if obj.get("engine") is None:
        try:
            obj["engine"] = store.make_engine(config.check_url(config.database_url(obj.get("db"))))
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        except Exception as error:  # noqa: BLE001 - a malformed URL, an unknown driver: one line, no URL
            # The URL is not repeated: it may hold the password.
            raise click.ClickException(f"cannot use the database URL: {type(error).__name__}: "
                                       f"{_reason(error)}") from None
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
    except DataError as error:
        # Only the server's reason: the statement's parameters (a NAS secret, say) stay out.
        raise click.ClickException(f"the database refused a value: {_reason(error)}") from None
    except OverflowError:
        raise click.ClickException("a number is too large for the database") from None
    except (OperationalError, ProgrammingError) as error:
        reason = _reason(error)
        if "no such table" in reason or "doesn't exist" in reason:
            raise click.ClickException("the database has no rlm_cap tables yet: run `capctl db init`") from None
        raise click.ClickException(f"database error: {reason}{_hint(reason)}") from None
    except DBAPIError as error:
        raise click.ClickException(f"database error: {_reason(error)}") from None


def _hint(reason: str) -> str:
    if "readonly database" in reason:
        return " (the database file or its directory is read-only: nothing was changed)"
    if "disk is full" in reason or "No space left" in reason:
        return " (the disk is full: nothing was changed)"
    return ""


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
