"""Shared fixtures: a fresh database per test, on SQLite and on MariaDB.

Store tests take the ``engine`` (or ``db_url``) fixture and so run on both.
MariaDB is the production database: when it does not answer, those tests fail
(they never skip) unless RLM_CAP_SKIP_MARIADB=1 is set by hand. ``make test``
starts MariaDB and creates the ``rlm_cap_test`` account first.
"""

from __future__ import annotations

import email
import email.policy
import base64
import os
import socket
import sys
import threading
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import create_engine, text

from cli.lab import FreeRadius
from rlm_cap import store
from rlm_cap.periods import parse_time_frame


MARIADB_SERVER = os.environ.get(
    "RLM_CAP_TEST_MARIADB_URL", "mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1:3306")
MARIADB_DATABASE = f"rlm_cap_test_{os.getpid()}"

NOW = datetime(2026, 11, 3, 10, 0, tzinfo=timezone.utc)
GB = 10**9


@contextmanager
def new_mariadb_database(name: str):
    """A new database ``name`` with the rlm_cap schema on the test server; dropped at the end."""
    admin = create_engine(MARIADB_SERVER + "/")
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as error:  # noqa: BLE001 - any failure to reach it means the same
        if os.environ.get("RLM_CAP_SKIP_MARIADB") == "1":
            pytest.skip("MariaDB skipped by RLM_CAP_SKIP_MARIADB=1")
        pytest.fail(f"MariaDB is not reachable at {MARIADB_SERVER} ({error}); "
                    "run `make test` (it installs and starts it) or `sh .ci/ensure-mariadb`")
    url = f"{MARIADB_SERVER}/{name}"
    engine = store.make_engine(url)
    store.create_schema(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(scope="session")
def mariadb_url():
    with new_mariadb_database(MARIADB_DATABASE) as url:
        yield url


def _wipe(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for table in reversed(store.metadata.sorted_tables):
            conn.execute(table.delete())
        conn.execute(text("SET FOREIGN_KEY_CHECKS=1"))


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request, tmp_path):
    """A URL of an empty rlm_cap database, once per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rlm_cap.sqlite3'}"
        engine = store.make_engine(url)
        store.create_schema(engine)
        engine.dispose()
        return url
    url = request.getfixturevalue("mariadb_url")
    engine = store.make_engine(url)
    _wipe(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url):
    engine = store.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def world(engine):
    """A 10 GB plan with a 00:00-04:00 bonus frame, 5 GB / 10 GB top-up plans,
    an 80 % notification, and customer alice with service alice@isp."""
    return make_world(engine)


def make_world(engine) -> dict:
    with engine.begin() as conn:
        plan_id = store.add_plan(conn, name="Home 10GB", monthly_limit=10 * GB, action="reduce",
                                 reduce_percent=50, normal_rate="10M/20M", bonus_limit=5 * GB,
                                 rollover=True)
        store.set_time_frames(conn, plan_id, [parse_time_frame("00:00-04:00")])
        store.add_topup_plan(conn, plan_id, "5GB", 5 * GB, Decimal("10"))
        store.add_topup_plan(conn, plan_id, "10GB", 10 * GB, Decimal("15"))
        store.add_notification_rule(conn, plan_id, "monthly", 80, "email", "80% used",
                                    "{{ customer.name }}, you used 80% of {{ service.description }}")
        customer_id = store.add_customer(conn, "alice", NOW, balance=Decimal("50"), email="alice@example.net")
        service_id = store.add_service(conn, customer_id, plan_id, "alice@isp", "Home internet", NOW, "ok")
    return {"plan_id": plan_id, "customer_id": customer_id, "service_id": service_id}


PASSWORD = "s3cr3t-Pässwörd:42"  # an SMTP login with non-ASCII characters


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    def __init__(self):
        self.envelopes = []
        self.logins = []  # (mechanism, login, password) of successful AUTHs

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        if (login, password) == ("noc", PASSWORD):
            self.logins.append((mechanism, login, password))
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def message(self, index=-1):
        return email.message_from_bytes(self.envelopes[index].content, policy=email.policy.default)

    def body(self, index=-1) -> str:
        """The decoded text, with the wire's CRLF line ends turned back into LF."""
        return self.message(index).get_content().replace("\r\n", "\n")


@pytest.fixture
def smtp_server():
    """Start an aiosmtpd server: ``start(**smtp_parameters) -> (port, inbox)``."""
    controllers = []

    def start(**parameters):
        inbox = Inbox()
        if parameters.pop("auth", False):
            parameters.setdefault("authenticator", inbox.authenticator)
            parameters.setdefault("auth_required", True)
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="mx.test",
                                ready_timeout=5, **parameters)
        controller.start()
        controllers.append(controller)
        return port, inbox

    yield start
    for controller in controllers:
        controller.stop()




class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), GatewayHandler)
        self.requests = []  # dicts: method, path, query, headers, body
        self.status = 200
        self.answer = b"OK"
        self.delay = 0.0
        self.release = threading.Event()

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up (the timeout test): nothing to report
        super().handle_error(request, client_address)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class GatewayHandler(BaseHTTPRequestHandler):
    server: Gateway

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        self.server.requests.append({
            "method": self.command, "path": self.path, "route": parts.path,
            "query": urllib.parse.parse_qs(parts.query, keep_blank_values=True),
            "headers": self.headers, "body": body})
        if self.server.delay:
            self.server.release.wait(self.server.delay)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/send")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = self.server.answer
        if self.server.status >= 400:  # echo the credentials like a careless gateway would
            authorization = self.headers.get("Authorization", "")
            decoded = base64.b64decode(authorization[6:]).decode() if authorization else ""
            answer += f" auth={authorization} creds={decoded}".encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _handle

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass


@pytest.fixture
def gateway():
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def radius(db_url, tmp_path):
    """Start FreeRADIUS with rlm_cap; every instance is killed at the end."""
    started: list[FreeRadius] = []

    def start(mode="journal", name="r1", **settings) -> FreeRadius:
        server = FreeRadius(db_url, tmp_path / name, mode=mode, node=name, settings=settings).start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.kill()
