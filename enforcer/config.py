"""cap-enforcer's configuration: the same file and database URL resolution as capctl.

INI file (``RLM_CAP_CONFIG`` or /etc/rlm_cap/rlm_cap.conf; keep it 0600, it
holds passwords)::

    [database]
    url = mysql+pymysql://rlm_cap:SECRET@127.0.0.1/rlm_cap

    [enforcer]
    node = enforcer1          ; names this instance's leases (default: host name)
    coa_interval = 0.25       ; seconds between outbox passes for CoA/Disconnect (a pass is one cheap query when idle)
    notify_interval = 5       ; ... for notifications
    period_interval = 60      ; period close (rollover, restore)
    housekeeping_interval = 300 ; expiry history, stale sessions
    batch_size = 50           ; actions claimed per pass
    concurrency = 8           ; NAS talked to at once: a dead NAS stalls only its own
    lease = 60                ; seconds a claimed action is ours; then another enforcer may retry it
    coa_timeout = 2           ; seconds per CoA attempt
    coa_attempts = 3          ; attempts per pass (with backoff)
    max_attempts = 8          ; passes before an action is given up (failed)
    stale_after = 1800        ; an open session with no update for this long is closed

    [smtp]
    host = 127.0.0.1
    port = 25
    starttls = no
    username =
    password =
    sender = noc@example.net

    [sms]
    url = https://sms.example.net/send?to={{ phone|urlencode }}&text={{ text|urlencode }}
    method = GET
"""

from __future__ import annotations

import configparser
import socket
from dataclasses import dataclass

from rlm_cap.config import read_config

from .notify import SmsGateway, Smtp


@dataclass(frozen=True)
class EnforcerConfig:
    node: str
    coa_interval: float = 0.25
    notify_interval: float = 5.0
    period_interval: float = 60.0
    housekeeping_interval: float = 300.0
    batch_size: int = 50
    concurrency: int = 8
    lease: float = 60.0
    coa_timeout: float = 2.0
    coa_attempts: int = 3
    max_attempts: int = 8
    stale_after: float = 1800.0
    smtp: Smtp | None = None
    sms: SmsGateway | None = None


def _get(parser: configparser.ConfigParser, section: str, key: str, kind, default):
    if not parser.has_option(section, key) or parser.get(section, key).strip() == "":
        return default
    text = parser.get(section, key).strip()
    try:
        if kind is bool:
            return parser.getboolean(section, key)
        return kind(text)
    except ValueError:
        raise ValueError(f"[{section}] {key} = {text!r} is not a valid {kind.__name__}") from None


def load(parser: configparser.ConfigParser | None = None) -> EnforcerConfig:
    parser = parser if parser is not None else read_config()
    numbers = {name: _get(parser, "enforcer", name, type(default), default)
               for name, default in (("coa_interval", 0.25), ("notify_interval", 5.0), ("period_interval", 60.0),
                                     ("housekeeping_interval", 300.0), ("batch_size", 50), ("concurrency", 8),
                                     ("lease", 60.0), ("coa_timeout", 2.0), ("coa_attempts", 3),
                                     ("max_attempts", 8), ("stale_after", 1800.0))}
    smtp = None
    if parser.has_section("smtp"):
        smtp = Smtp(host=_get(parser, "smtp", "host", str, "127.0.0.1"), port=_get(parser, "smtp", "port", int, 25),
                    starttls=_get(parser, "smtp", "starttls", bool, False),
                    username=_get(parser, "smtp", "username", str, None),
                    password=_get(parser, "smtp", "password", str, None),
                    sender=_get(parser, "smtp", "sender", str, "noc@localhost"))
    sms = None
    if parser.has_option("sms", "url"):
        sms = SmsGateway(url=parser.get("sms", "url"), method=_get(parser, "sms", "method", str, "POST"),
                         body=_get(parser, "sms", "body", str, None),
                         content_type=_get(parser, "sms", "content_type", str,
                                           "application/x-www-form-urlencoded"),
                         username=_get(parser, "sms", "username", str, None),
                         password=_get(parser, "sms", "password", str, None))
    return EnforcerConfig(node=_get(parser, "enforcer", "node", str, socket.gethostname()),
                          smtp=smtp, sms=sms, **numbers)
