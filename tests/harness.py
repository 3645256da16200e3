"""Real parts for end-to-end tests: FreeRADIUS with rlm_cap, a NAS, a MariaDB of our own.

Every process started here is ended by its own PID, never by name; traffic
goes to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from pyrad import client as radius_client
from pyrad import packet as radius_packet
from pyrad.dictionary import Dictionary

from rlm_cap import store

PROJECT = Path(__file__).resolve().parent.parent
DICTIONARY = Dictionary(str(PROJECT / "rlm_cap" / "dictionary"))
CAPCTL = str(Path(sys.executable).parent / "capctl")
SECRET = b"testing123"


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition()`` until it is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class FreeRadius:
    """``capctl radius run`` in a subprocess; its output kept for assertions."""

    def __init__(self, db_url: str, directory: Path, mode: str = "journal", node: str = "test",
                 journal_dir: Path | None = None, settings: dict[str, str] | None = None):
        self.db_url, self.directory, self.mode, self.node = db_url, Path(directory), mode, node
        self.journal_dir = journal_dir or self.directory.parent / f"{self.directory.name}-journal"
        self.settings = {"state_refresh": "0.2", "apply_interval": "0.01", **(settings or {})}
        self.auth_port, self.acct_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self) -> "FreeRadius":
        argv = [CAPCTL, "--db", self.db_url, "radius", "run", "--auth-port", str(self.auth_port),
                "--acct-port", str(self.acct_port), "--mode", self.mode, "--dir", str(self.directory),
                "--journal-dir", str(self.journal_dir), "--node", self.node, "--secret", SECRET.decode()]
        for key, value in self.settings.items():
            argv += ["--set", f"{key}={value}"]
        self.output = []
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        ready = threading.Event()

        def read(stream, lines):
            for line in stream:
                lines.append(line.rstrip("\n"))
                if "Ready to process requests" in line:
                    ready.set()

        threading.Thread(target=read, args=(self.process.stdout, self.output), daemon=True).start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("FreeRADIUS did not start:\n" + "\n".join(self.output[-30:]))
        return self

    @property
    def log(self) -> str:
        return "\n".join(self.output)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: rlm_cap's detach() drains the journal."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL, by PID: a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def quarantine(self) -> str:
        files = sorted((self.directory / "radacct").glob("rlm_cap-quarantine-*"))
        return "".join(f.read_text(errors="replace") for f in files)


@dataclass
class Nas:
    """A NAS that sends accounting and logins to FreeRADIUS, like a MikroTik does."""

    radius: FreeRadius
    address: str = "192.0.2.1"
    timeout: float = 2.0
    retries: int = 1  # pyrad: attempts in all, not retransmissions
    answered: list = field(default_factory=list)

    def _client(self) -> radius_client.Client:
        c = radius_client.Client(server="127.0.0.1", authport=self.radius.auth_port,
                                 acctport=self.radius.acct_port, secret=SECRET, dict=DICTIONARY)
        c.timeout, c.retries = self.timeout, self.retries
        return c

    def accounting(self, status: str, session: str = "", user: str | bytes = "", down: int | None = None,
                   up: int | None = None, session_time: int | None = None, event_time: int | None = None,
                   gigawords: bool = True, delay: int = 0, **extra) -> bool:
        """Send one Accounting-Request; True when FreeRADIUS answered it."""
        c = self._client()
        request = c.CreateAcctPacket()
        request["Acct-Status-Type"] = status
        request["NAS-IP-Address"] = self.address
        if user:
            request["User-Name"] = user
        if session:
            request["Acct-Session-Id"] = session
        for name, total in (("Output", down), ("Input", up)):
            if total is not None:
                request[f"Acct-{name}-Octets"] = total % 2**32
                if gigawords:
                    request[f"Acct-{name}-Gigawords"] = total >> 32
        if session_time is not None:
            request["Acct-Session-Time"] = session_time
        if event_time is not None:
            request["Event-Timestamp"] = event_time
        if delay:
            request["Acct-Delay-Time"] = delay
        for name, value in extra.items():
            request[name.replace("_", "-")] = value
        try:
            reply = c.SendPacket(request)
        except radius_client.Timeout:
            return False
        ok = reply.code == radius_packet.AccountingResponse
        if ok:
            self.answered.append((status, session, user, down, up))
        return ok

    def login(self, user: str, password: str = "secret"):
        """Access-Request; the reply packet (code, attributes)."""
        c = self._client()
        request = c.CreateAuthPacket(code=radius_packet.AccessRequest, User_Name=user)
        request["User-Password"] = request.PwCrypt(password)
        request["NAS-IP-Address"] = self.address
        return c.SendPacket(request)


def reply_attributes(reply) -> dict:
    return {DICTIONARY.attributes[key].name if isinstance(key, (int, tuple)) and key in DICTIONARY.attrindex.backward
            else key: reply[key] for key in reply.keys()}


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
