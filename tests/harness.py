"""A MariaDB of a test's own, for the tests that kill their database.

FreeRADIUS, the NAS and the NAS simulator the tests drive are in ``cli.lab``
(``make demo`` uses them too). The mariadbd started here is ended by its own
PID, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pymysql

from cli.lab import free_port, wait_for
from rlm_cap import store



class OwnMariaDB:
    """A mariadbd of the test's own (datadir, port, socket), killed only by its PID."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.datadir, self.socket = self.base / "data", self.base / "mysqld.sock"
        self.port = free_port(socket.SOCK_STREAM)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/rlm_cap"

    def install(self) -> "OwnMariaDB":
        self.base.mkdir(parents=True, exist_ok=True)
        installer = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        subprocess.run([installer, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)
        self.start()
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE rlm_cap CHARACTER SET utf8mb4")
        connection.close()
        engine = store.make_engine(self.url)
        store.create_schema(engine)
        engine.dispose()
        return self

    def start(self) -> None:
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             f"--socket={self.socket}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", f"--pid-file={self.base / 'mysqld.pid'}",
             f"--log-error={self.base / 'error.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def answers():
            if self.process.poll() is not None:
                raise AssertionError("mariadbd exited: " + (self.base / "error.log").read_text()[-2000:])
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return True
            except pymysql.err.OperationalError:
                return False
        wait_for(answers, timeout=60, interval=0.2, what="the test's own mariadbd")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
