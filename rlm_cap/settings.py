"""CAP settings and how they resolve: global → partner → plan → customer → service.

Every setting has a type, a default and a description; values are stored as
text (table ``settings``) and parsed here, so the CLI, the module and the
enforcer read them the same way. Resolution is a pure function of the rows
found at each scope.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SCOPES = ("global", "partner", "plan", "customer", "service")

LIMITATION_TYPES = ("all", "auto", "manual")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not yes/no: {text!r}")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative: {text!r}")
    return value


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "Europe"
        raise ValueError(f"unknown time zone {text!r} (use an IANA name like Europe/Berlin)") from None
    return text


def _template(text: str) -> str:
    from .templates import check  # Jinja2 parses only: no I/O
    check(text)
    return text


def _limitation(text: str) -> str:
    if text not in LIMITATION_TYPES:
        raise ValueError(f"limitation type must be one of {', '.join(LIMITATION_TYPES)}, not {text!r}")
    return text


@dataclass(frozen=True)
class Settings:
    """The effective settings for one service."""

    check_balance: bool = False
    rollover_months: int = 1
    auto_topup: bool = True
    transfer_usage: bool = False
    use_topup_first: bool = False
    issue_invoice_with_auto_topup: bool = False
    limitation_type: str = "all"
    max_topups_per_month: int = 0  # 0 = no limit
    timezone: str = "UTC"
    auto_topup_description: str = "Auto Top-Up {{size}} for {{service.description}}"
    admin_topup_description: str = "Top-Up charge {{size}} for {{service.description}}"
    portal_topup_description: str = "Portal Top-Up {{size}} for {{service.description}}"
    portal_topup: bool = False
    pay_before_topup: bool = True

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


PARSERS = {
    "check_balance": _bool, "rollover_months": _count, "auto_topup": _bool,
    "transfer_usage": _bool, "use_topup_first": _bool,
    "issue_invoice_with_auto_topup": _bool, "limitation_type": _limitation,
    "max_topups_per_month": _count, "timezone": _zone,
    "auto_topup_description": _template, "admin_topup_description": _template,
    "portal_topup_description": _template, "portal_topup": _bool, "pay_before_topup": _bool,
}

DESCRIPTIONS = {
    "check_balance": "refuse a top-up the customer's balance cannot pay",
    "rollover_months": "months a rolled-over bucket stays valid",
    "auto_topup": "allow auto top-ups (the customer must enable them too)",
    "transfer_usage": "move unused top-up data to the new service on a plan change",
    "use_topup_first": "consume top-ups before the monthly limit",
    "issue_invoice_with_auto_topup": "put auto top-ups on the next invoice instead of a transaction",
    "limitation_type": "which top-ups count against max_topups_per_month: all, auto, manual",
    "max_topups_per_month": "top-ups a service may get per month (0 = no limit)",
    "timezone": "time zone of periods and time frames (IANA name)",
    "auto_topup_description": "Jinja2 template for auto top-up transactions",
    "admin_topup_description": "Jinja2 template for operator top-up transactions",
    "portal_topup_description": "Jinja2 template for portal top-up transactions",
    "portal_topup": "subscribers may buy top-ups in the portal",
    "pay_before_topup": "portal top-ups give data only after payment",
}

assert set(PARSERS) == {f.name for f in fields(Settings)} == set(DESCRIPTIONS)


def parse_setting(name: str, text: str):
    """Check and convert one setting; raises ValueError naming the setting."""
    if name not in PARSERS:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(PARSERS))}")
    try:
        return PARSERS[name](text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def resolve(layers: list[dict[str, str]]) -> Settings:
    """Merge text settings, most general first (global, partner, plan, customer, service).

    A later layer overrides an earlier one; a value that no longer parses (edited
    by hand in the database) raises ValueError naming it.
    """
    values: dict[str, object] = {}
    for layer in layers:
        for name, text in layer.items():
            if name in PARSERS and text is not None:
                values[name] = parse_setting(name, text)
    return Settings(**values)
