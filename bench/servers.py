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
``rlm_cap.raddb`` and is stopped by its own PID.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymysql
from pymysql.constants import CLIENT
from sqlalchemy.engine import make_url

from rlm_cap import raddb

from .load import SECRET, free_port

PATHS = ("rlm_cap-journal", "rlm_cap-sync", "rlm_sql", "ok", "python-noop")
BENCH = Path(__file__).resolve().parent
STOCK_SQL = raddb.SYSTEM_RADDB / "mods-config" / "sql" / "main" / "mysql"


class Server:
    """FreeRADIUS in the foreground (``-f``), ready once it says so."""

    def __init__(self, argv: list[str], acct_port: int, env: dict[str, str] | None = None):
        self.argv, self.acct_port, self.env = argv, acct_port, env
        self.output: list[str] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        ready = threading.Event()

        def read():
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                if "Ready to process requests" in line:
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FreeRADIUS did not start:\n" + "\n".join(self.output[-30:]))
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


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


def start(path: str, directory: Path, db_url: str | None = None,
          rlm_cap_settings: dict[str, str] | None = None) -> Server:
    """Render ``path``'s configuration into ``directory`` and start FreeRADIUS on a free port."""
    acct_port = free_port()
    if path.startswith("rlm_cap-"):
        mode = path.split("-", 1)[1]
        argv = [str(Path(sys.executable).parent / "capctl"), "--db", db_url, "radius", "run",
                "--auth-port", str(free_port()), "--acct-port", str(acct_port), "--mode", mode, "--dir", str(directory / "raddb"),
                "--journal-dir", str(directory / "journal"), "--node", f"bench-{mode}",
                "--secret", SECRET.decode()]
        for key, value in (rlm_cap_settings or {}).items():
            argv += ["--set", f"{key}={value}"]
        return Server(argv, acct_port).start()

    target = raddb.render(raddb.Options(directory / "raddb", "sqlite://", secret=SECRET.decode(),
                                        acct_port=acct_port))
    (target / "mods-enabled" / "rlm_cap").unlink()
    (target / "sites-enabled" / "rlm_cap").unlink()
    if path == "rlm_sql":
        (target / "mods-enabled" / "sql").write_text(_stock_sql_module(db_url))
        site = _site("stock_sql", acct_port, "\t\tacct_unique", "\t\tsql")
    elif path == "ok":
        site = _site("ok_only", acct_port, "", "\t\tok")
    elif path == "python-noop":
        module = f"""python3 bench_noop {{
	python_path = "{BENCH}"
	module = noop_module
	mod_accounting = ${{.module}}
	func_accounting = accounting
}}
"""
        (target / "mods-enabled" / "bench_noop").write_text(module)
        site = _site("python_noop", acct_port, "", "\t\tbench_noop")
    else:
        raise ValueError(f"unknown path {path!r}; one of {PATHS}")
    (target / "sites-enabled" / path).write_text(site)
    return Server(raddb.command(target), acct_port, raddb.environment(dict(os.environ))).start()
