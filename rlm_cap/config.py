"""Where the database is: one resolution for capctl, cap-enforcer and the module.

Order: an explicit URL (``--db``), else ``RLM_CAP_DB_URL``, else the config
file (``RLM_CAP_CONFIG`` or /etc/rlm_cap/rlm_cap.conf, INI section
``[database]`` key ``url``), else the embedded SQLite default in the user's
data directory. MariaDB/MySQL (``mysql+pymysql://user:pass@host/db``) is what
production should use.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/rlm_cap/rlm_cap.conf")


def default_sqlite_path() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "rlm_cap" / "rlm_cap.sqlite3"


def config_path() -> Path:
    return Path(os.environ.get("RLM_CAP_CONFIG") or DEFAULT_CONFIG)


def read_config(path: Path | None = None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    path = path or config_path()
    if path.exists():
        parser.read(path)
    return parser


def database_url(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("RLM_CAP_DB_URL"):
        return os.environ["RLM_CAP_DB_URL"]
    parser = read_config()
    if parser.has_option("database", "url"):
        return parser.get("database", "url")
    path = default_sqlite_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def check_url(url: str) -> str:
    """``url``, or ValueError for a URL whose parse would show part of the password.

    An unescaped '@' in the password makes the password's tail the host name,
    which drivers quote in their error messages.
    """
    if url.partition("://")[2].partition("?")[0].count("@") > 1:
        raise ValueError("the database URL has more than one '@': write an '@' in the user name or "
                         "password as %40")
    return url
