"""The accounting paths bench/ compares, each a real FreeRADIUS on loopback ports.

- ``rlm_cap-journal`` / ``rlm_cap-sync``: the project's ``freeradius-conf/``
  (through ``capctl radius run``) on a MariaDB database.
- ``rlm_sql``: stock FreeRADIUS accounting into the same MariaDB server: the
  Debian ``sql`` module with the MySQL driver, its stock ``queries.conf`` and
  the stock ``radacct`` schema, ``acct_unique`` in preacct.
- ``ok``: an accounting section that only answers (no module): FreeRADIUS's
  own ceiling on this machine.
- ``python-noop``: rlm_python3 calling a Python function that returns OK: the
  ceiling of any Python module.

Every server runs from a private copy of /etc/freeradius/3.0 rendered by
``rlm_cap.raddb`` and is stopped by its own PID (``cli.lab``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pymysql
from pymysql.constants import CLIENT
from sqlalchemy.engine import make_url

from cli import lab
from rlm_cap import raddb
from rlm_cap.module import Config

from .load import SECRET

PATHS = ("rlm_cap-journal", "rlm_cap-sync", "rlm_sql", "ok", "python-noop")
BENCH = Path(__file__).resolve().parent
STOCK_SQL = raddb.SYSTEM_RADDB / "mods-config" / "sql" / "main" / "mysql"


class StockFreeRadius(lab.FreeRadius):
    """FreeRADIUS on a configuration rendered here, without rlm_cap (``render`` fills the directory)."""

    def __init__(self, directory: Path, render):
        super().__init__("sqlite://", directory)
        self.render = render

    def command(self) -> tuple[list[str], dict[str, str]]:
        target = raddb.render(raddb.Options(self.directory, "sqlite://", secret=SECRET.decode(),
                                            auth_port=self.auth_port, acct_port=self.acct_port))
        (target / "mods-enabled" / "rlm_cap").unlink()
        (target / "sites-enabled" / "rlm_cap").unlink()
        self.render(target, self.acct_port)
        return raddb.command(target), raddb.environment(dict(os.environ))


def _site(name: str, acct_port: int, preacct: str, accounting: str, modules: str = "") -> str:
    return f"""server {name} {{
	listen {{
		type = acct
		ipaddr = 127.0.0.1
		port = {acct_port}
		recv_buff = 4194304
	}}
	preacct {{
{preacct}
	}}
	accounting {{
{accounting}
	}}
}}
{modules}"""


def _stock_sql_module(db_url: str) -> str:
    """Debian's mods-available/sql with the MySQL driver pointed at ``db_url``; nothing else changed."""
    url = make_url(db_url)
    text = (raddb.SYSTEM_RADDB / "mods-available" / "sql").read_text()
    text = re.sub(r'driver = "rlm_sql_null"', 'driver = "rlm_sql_${dialect}"', text)
    for key, value in (("dialect", "mysql"), ("server", url.host or "127.0.0.1"), ("port", str(url.port or 3306)),
                       ("login", url.username or ""), ("password", url.password or ""),
                       ("radius_db", url.database)):
        text = raddb.set_option(text, key, value, quote=key != "port")
    # The stock mysql { tls { ... } } block names certificates Debian does not ship.
    return re.sub(r"\n\s*tls \{.*?\n\t\t\}", "", text, flags=re.DOTALL)


def create_radacct(db_url: str) -> None:
    """The stock schema (radacct, radcheck, ...; emptied first) in the database of ``db_url``."""
    url = make_url(db_url)
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                           database=url.database, autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS radacct, radcheck, radgroupcheck, radgroupreply, radreply, "
                           "radusergroup, radpostauth, nas, nasreload")
            cursor.execute((STOCK_SQL / "schema.sql").read_text())
            while cursor.nextset():
                pass
    finally:
        conn.close()


def radacct_download(db_url: str) -> int:
    """Bytes downloaded as the stock radacct table holds them (Acct-Output = the subscriber's download)."""
    url = make_url(db_url)
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                           database=url.database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT COALESCE(SUM(acctoutputoctets), 0) FROM radacct")
            return int(cursor.fetchone()[0])
    finally:
        conn.close()


def start(path: str, directory: Path, db_url: str | None = None) -> lab.FreeRadius:
    """Start FreeRADIUS for ``path`` on free loopback ports, its files in ``directory``."""
    if path.startswith("rlm_cap-"):
        # The product's defaults, not the faster polling the tests use.
        defaults = {"apply_interval": str(Config.apply_interval), "state_refresh": str(Config.state_refresh)}
        return lab.FreeRadius(db_url, directory / "raddb", mode=path.split("-", 1)[1], node=f"bench-{path}",
                              settings=defaults).start()

    def render(target: Path, acct_port: int) -> None:
        if path == "rlm_sql":
            (target / "mods-enabled" / "sql").write_text(_stock_sql_module(db_url))
            site = _site("stock_sql", acct_port, "\t\tacct_unique", "\t\tsql")
        elif path == "ok":
            site = _site("ok_only", acct_port, "", "\t\tok")
        elif path == "python-noop":
            (target / "mods-enabled" / "bench_noop").write_text(
                f'python3 bench_noop {{\n\tpython_path = "{BENCH}"\n\tmodule = noop_module\n'
                f'\tmod_accounting = ${{.module}}\n\tfunc_accounting = accounting\n}}\n')
            site = _site("python_noop", acct_port, "", "\t\tbench_noop")
        else:
            raise ValueError(f"unknown path {path!r}; one of {PATHS}")
        (target / "sites-enabled" / path).write_text(site)
    return StockFreeRadius(directory / "raddb", render).start()
