"""rlm_python3 entry points: FreeRADIUS ↔ ``rlm_cap.module``.

Thin on purpose: this module exists only inside FreeRADIUS (``radiusd``), so
everything it does beyond translating codes lives in ``module`` and is tested
without FreeRADIUS. Wire it up with ``freeradius-conf/mods-available/rlm_cap``.
"""

from __future__ import annotations

import time

import radiusd  # provided by rlm_python3

from .config import check_url
from .module import ERROR, INFO, MALFORMED, NOOP, NOT_DURABLE, OK, REJECT, UPDATED, WARNING, Config, Module

_LEVELS = {ERROR: radiusd.L_ERR, WARNING: radiusd.L_WARN, INFO: radiusd.L_INFO}
_CODES = {
    OK: radiusd.RLM_MODULE_OK,
    NOOP: radiusd.RLM_MODULE_NOOP,
    UPDATED: radiusd.RLM_MODULE_UPDATED,
    REJECT: radiusd.RLM_MODULE_REJECT,
    # 'reject' ends the accounting section at once whatever follows (even the
    # stock sql module's 'ok'), so FreeRADIUS sends no Accounting-Response.
    NOT_DURABLE: radiusd.RLM_MODULE_REJECT,
    # 'fail' is what the site's guard catches: the packet goes to the quarantine
    # detail file and is answered.
    MALFORMED: radiusd.RLM_MODULE_FAIL,
}

_module: Module | None = None
_db_password: str | None = None  # read once at instantiate: a storm of bad packets logs a line each


def _log(level: str, message: str) -> None:
    radiusd.radlog(_LEVELS[level], _scrub(message))


def _password() -> str | None:
    try:
        from sqlalchemy.engine import make_url
        return make_url(dict(radiusd.config).get("db_url") or "").password
    except Exception:  # noqa: BLE001 - a URL that does not parse has no password to find
        return None


def _scrub(text: str) -> str:
    """``text`` without the database password, whatever an error message put into it.

    The module never writes it; this guards against a driver or a bug that does.
    """
    password = _db_password
    return text.replace(password, "***") if password and len(password) >= 4 else text


def instantiate(_):
    global _module, _db_password
    _db_password = _password()
    try:
        check_url(str(dict(radiusd.config).get("db_url") or ""))
        _module = Module(Config.from_radiusd(dict(radiusd.config)), _log)
        _module.start()
    except Exception as error:  # noqa: BLE001 - only -1 stops FreeRADIUS; say why first
        radiusd.radlog(radiusd.L_ERR, _scrub(f"rlm_cap: cannot start: {error}"))
        return -1
    return 0


def accounting(request):
    try:
        return _CODES[_module.accounting(request, time.time())]
    except Exception as error:  # noqa: BLE001 - a bug must not fail the packet on every retransmission
        # 'fail': the site's guard keeps the packet in the quarantine file and answers the NAS.
        radiusd.radlog(radiusd.L_ERR, _scrub(f"rlm_cap: accounting failed ({error!r}): answered and quarantined"))
        return radiusd.RLM_MODULE_FAIL


def authorize(request):
    try:
        result, reply = _module.authorize(request)
    except Exception as error:  # noqa: BLE001 - an exception here would reject the login
        radiusd.radlog(radiusd.L_ERR, _scrub(f"rlm_cap: authorize failed, login left alone: {error!r}"))
        return radiusd.RLM_MODULE_NOOP
    return (_CODES[result], reply, ())


def detach(_=None):
    if _module is not None:
        _module.stop()
    return 0


__all__ = ["instantiate", "authorize", "accounting", "detach", "INFO"]
