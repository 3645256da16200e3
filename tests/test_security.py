"""Secrets stay secret, packets are authenticated, files are private, templates are sandboxed.

- RADIUS shared secrets, NAS secrets, SMTP/SMS passwords and database
  passwords never appear in a log line, an error message, a traceback or a row
  the enforcer writes: checked in FreeRADIUS's own output from a real run,
  in ``capctl``'s output on database errors (with a password in the URL), in
  the enforcer's logging (caplog) and in the database afterwards.
- CoA/Disconnect requests carry a valid Message-Authenticator (checked at a
  simulated NAS); a reply signed with another secret, or tampered with, is
  ignored like noise.
- What holds a secret or a subscriber's records is not readable by others: the
  rendered FreeRADIUS configuration (database password, NAS secret), the
  journal, the quarantine detail file.
- Operator-written Jinja2 templates run in a sandbox: ``__class__``,
  ``__globals__``, ``_private`` attributes are refused with a clear error, and
  a stored template that does so fails its notification, not the enforcer.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pyrad import dictionary as pyrad_dictionary
from pyrad import packet
from sqlalchemy import select

from cli.lab import SECRET, FreeRadius, Nas, NasSimulator, wait_for
from enforcer import coa
from enforcer.config import EnforcerConfig
from enforcer.jobs import Enforcer
from enforcer.notify import SmsGateway, Smtp, notification_context, render_message
from rlm_cap import raddb, store, templates

from .cli_helpers import fails
from .conftest import GB, NOW
from .test_fuzz_module import adapter  # noqa: F401 - the fixture: rlm_cap.freeradius against a stand-in radiusd
from .test_ledger import apply, session_stream

DB_PASSWORD = "Zx7-db-Pa55w0rd"
NAS_SECRET = "Nq4-nas-s3cret"
SMTP_PASSWORD = "Sm9-smtp-pw"
SMS_PASSWORD = "Ms3-sms-pw"
BIN = Path(sys.executable).parent


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


# --------------------------------------------------------------------------- files

def test_rendered_configuration_is_private_whatever_the_umask(tmp_path):
    """The raddb copy holds the database password (mods-enabled/rlm_cap) and the NAS secret
    (clients.conf): created 0600 in a 0700 directory, even under umask 000."""
    old = os.umask(0)
    try:
        target = raddb.render(raddb.Options(tmp_path / "raddb", f"mysql+pymysql://rlm:{DB_PASSWORD}@127.0.0.1/x",
                                            secret=NAS_SECRET))
    finally:
        os.umask(old)
    module, clients = target / "mods-enabled" / "rlm_cap", target / "clients.conf"
    assert DB_PASSWORD in module.read_text() and NAS_SECRET in clients.read_text()  # where they belong
    assert stat.S_IMODE(module.stat().st_mode) == 0o600
    assert stat.S_IMODE(clients.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for sub in ("log", "radacct", "run"):
        assert private(target / sub), sub
    for path in target.rglob("*"):  # nothing else of the copy carries them
        if path.is_file() and not path.is_symlink() and path not in (module, clients):
            content = path.read_text(errors="replace")
            assert DB_PASSWORD not in content and NAS_SECRET not in content, path


def test_a_freeradius_run_logs_no_secret_and_keeps_its_files_private(tmp_path, mariadb_url):
    """FreeRADIUS with rlm_cap, the database refusing its password (journal mode answers anyway):
    its output names the outage but neither the password nor the RADIUS secret; the journal and
    the quarantine file are this user's only."""
    base, database = mariadb_url.rsplit("/", 1)
    url = base.replace(":rlm_cap_test@", f":{DB_PASSWORD}@") + "/" + database
    assert DB_PASSWORD in url
    server = FreeRadius(url, tmp_path / "r1", mode="journal", node="sec").start()
    try:
        nas = Nas(server)
        assert nas.accounting("Start", "s1", "alice@isp")
        assert nas.accounting("Interim-Update", "s1", "alice@isp", down=1000, up=10, session_time=60)
        assert nas.accounting("Interim-Update", "q1", b"bad\xff\xfeuser", down=10, up=1, session_time=5)
        assert nas.login("alice@isp").code == packet.AccessAccept
        wait_for(lambda: "database unavailable" in server.log, timeout=20, what="the outage in the log")
        wait_for(lambda: "q1" in server.quarantine(), what="the invalid UTF-8 packet in the quarantine file")
    finally:
        server.stop()
        server.kill()
    secrets = (DB_PASSWORD, SECRET.decode())
    assert "Access denied" in server.log and "***" in server.log  # the outage, and the URL without its password
    for secret in secrets:
        assert secret not in server.log
    written = [p for p in list(server.directory.rglob("*")) + list(server.journal_dir.rglob("*"))
               if p.is_file() and not p.is_symlink()]
    holding = [p for p in written if DB_PASSWORD in p.read_text(errors="replace")]
    assert holding == [server.directory / "mods-enabled" / "rlm_cap"]  # the configuration, by design
    for path in (server.directory / "mods-enabled" / "rlm_cap", server.directory / "clients.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert SECRET.decode() in (server.directory / "clients.conf").read_text()
    for sub in ("log", "radacct"):
        for path in (server.directory / sub).rglob("*"):
            assert not any(secret in path.read_text(errors="replace") for secret in secrets), path
    quarantine = list((server.directory / "radacct").glob("rlm_cap-quarantine-*"))
    assert quarantine and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in quarantine)
    assert private(server.directory / "radacct") and private(server.directory)
    journals = list(server.journal_dir.glob("journal.*"))
    assert journals and private(server.journal_dir)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in journals)


# --------------------------------------------------------------------------- capctl on database errors

URLS = {
    "unreachable": f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:1/rlm_cap",
    "wrong password": f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:3306/rlm_cap_test",
    "bad port": f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:port/rlm_cap",
    "unknown driver": f"mysql+nodriver://rlm_cap_test:{DB_PASSWORD}@127.0.0.1/rlm_cap",
    "driver not installed": f"postgresql+psycopg://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:1/rlm_cap",
    "@ not escaped": f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@tail@127.0.0.1:3306/rlm_cap",
    "not a URL": f"{DB_PASSWORD}",
}
COMMANDS = [("plan", "list"), ("db", "init"), ("nas", "add", "192.0.2.1", "--secret", NAS_SECRET),
            ("settings", "set", "check_balance", "yes"), ("usage", "alice@isp")]


@pytest.mark.parametrize("url", URLS.values(), ids=URLS.keys())
def test_capctl_database_errors_are_one_line_without_the_password(url):
    for args in COMMANDS:
        result_line = fails(url, *args, fresh=True)  # one 'Error:' line, non-zero exit, no traceback
        assert DB_PASSWORD not in result_line and "tail@" not in result_line, (args, result_line)
        assert NAS_SECRET not in result_line


def _environment(tmp_path) -> dict:
    env = {**os.environ, "RLM_CAP_CONFIG": str(tmp_path / "none.conf"), "HOME": str(tmp_path)}
    env.pop("RLM_CAP_DB_URL", None)
    return env


@pytest.mark.parametrize("name", ["unreachable", "bad port", "@ not escaped"])
def test_capctl_process_prints_one_line_and_no_password(name, tmp_path):
    """The real entry point (stderr included, where an uncaught traceback would go)."""
    capctl = subprocess.run([str(BIN / "capctl"), "--db", URLS[name], "nas", "add", "192.0.2.1", "--secret",
                             NAS_SECRET], capture_output=True, text=True, timeout=60, env=_environment(tmp_path))
    assert capctl.returncode == 1
    assert capctl.stdout == "" and len(capctl.stderr.splitlines()) == 1, capctl.stderr
    assert capctl.stderr.startswith("Error: ")
    assert DB_PASSWORD not in capctl.stderr and NAS_SECRET not in capctl.stderr and "tail@" not in capctl.stderr


@pytest.mark.parametrize("name", [
    "unreachable", "bad port",
    "@ not escaped",
])
def test_cap_enforcer_process_prints_no_password(name, tmp_path):
    enforcer = subprocess.run([str(BIN / "cap-enforcer"), "--db", URLS[name], "once"], capture_output=True,
                              text=True, timeout=60, env=_environment(tmp_path))
    assert enforcer.returncode != 0
    for output in (enforcer.stdout, enforcer.stderr):
        assert DB_PASSWORD not in output and "tail@" not in output


# --------------------------------------------------------------------------- the enforcer's logs

class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_enforcer_logs_and_records_no_secret(engine, world, smtp_server, gateway, caplog):
    """Every way a send can go wrong - a silent NAS, forged replies, a NAK, a wrong SMTP password,
    an SMS gateway that echoes the credentials it got - and not one secret in the log or the database."""
    caplog.set_level(logging.DEBUG)
    port, inbox = smtp_server(auth=True, auth_require_tls=False)
    gateway.status = 500  # the test gateway echoes the Authorization header and credentials on errors
    with engine.begin() as conn:
        store.set_time_frames(conn, world["plan_id"], [])
        store.update_customer(conn, world["customer_id"], phone="+491701234567")
        store.add_notification_rule(conn, world["plan_id"], "monthly", 90, "both", "90%", "{{ usage.percent }}%")
    with NasSimulator(secret=NAS_SECRET) as sim:
        with engine.begin() as conn:
            store.add_nas(conn, "127.0.0.1", NAS_SECRET, "sim", "mikrotik", sim.port)
        apply(engine, *session_stream(NOW, [(11 * GB, 0)], nas="127.0.0.1"))
        clock = Clock(NOW + timedelta(minutes=30))
        config = EnforcerConfig(
            node="e1", coa_timeout=0.2, coa_attempts=2, max_attempts=6, concurrency=2,
            smtp=Smtp(host="127.0.0.1", port=port, username="noc", password=SMTP_PASSWORD, timeout=5),
            sms=SmsGateway(url=gateway.base + "/send?key=x", method="POST", username="sms", password=SMS_PASSWORD,
                           timeout=5))
        run = Enforcer(engine, config, coa.Client(timeout=0.2, retries=2, backoff=0), clock)
        for behaviour in ("silent", "bad-authenticator", "bad-message-authenticator", "nak"):
            sim.behaviour = behaviour
            run.send_actions()
            run.send_notifications()
            clock.now += timedelta(minutes=10)  # past every retry delay
        requests = sim.requests
    assert len(requests) >= 6  # the NAS was reached on every pass that was due
    assert all(r["message_authenticator"] and r["message_authenticator_valid"] for r in requests)
    assert not inbox.envelopes  # the SMTP login failed
    assert gateway.requests and all(r["headers"]["Authorization"] for r in gateway.requests)
    with engine.begin() as conn:
        dump = repr([conn.execute(select(table)).all() for table in store.metadata.sorted_tables
                     if table.name != "nas"])
        results = [a["result"] for a in store.list_actions(conn)]
    assert any("invalid repl" in (r or "") for r in results) or any("NAK" in (r or "") for r in results)
    assert any("535" in (r or "") or "Authentication" in (r or "") for r in results), results
    assert any("HTTP 500" in (r or "") for r in results), results
    # our loggers (the test SMTP server's own debug log shows the AUTH exchange it received)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("enforcer", "rlm_cap")))
    assert "retry_in" in logged and "invalid repl" in logged
    forms = [NAS_SECRET, SMTP_PASSWORD, SMS_PASSWORD, base64.b64encode(f"sms:{SMS_PASSWORD}".encode()).decode(),
             base64.b64encode(SMTP_PASSWORD.encode()).decode()]
    for secret in forms:
        assert secret not in logged
        assert secret not in dump


# --------------------------------------------------------------------------- CoA replies that do not verify

DICTIONARY = pyrad_dictionary.Dictionary(str(Path(raddb.PROJECT) / "rlm_cap" / "dictionary"))


class ForgingNas:
    """A NAS that answers every CoA/Disconnect with an ACK, forged as ``mode`` says:

    - ``"honest"``: signed with the shared secret (Response Authenticator and Message-Authenticator);
    - ``"wrong-secret"``: signed, correctly in form, with another secret;
    - ``"tampered"``: signed with the right secret, then one attribute byte changed on the way.
    """

    def __init__(self, secret: str, mode: str):
        self.secret, self.mode = secret.encode(), mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.requests: list[packet.CoAPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            request = packet.CoAPacket(packet=data, secret=self.secret, dict=DICTIONARY)
            self.requests.append(request)
            signer = b"not-" + self.secret if self.mode == "wrong-secret" else self.secret
            reply = packet.CoAPacket(code=request.code + 1, id=request.id, secret=signer,
                                     authenticator=request.authenticator, dict=DICTIONARY)
            reply["Reply-Message"] = "done"
            reply.add_message_authenticator()
            raw = bytearray(reply.ReplyPacket())
            if self.mode == "tampered":
                raw[-1] ^= 0x01  # the last byte of Reply-Message's value
            self.sock.sendto(bytes(raw), source)


@pytest.mark.parametrize("mode, outcome", [("honest", coa.ACK), ("wrong-secret", coa.TIMEOUT),
                                           ("tampered", coa.TIMEOUT)])
def test_replies_that_do_not_verify_are_ignored(mode, outcome):
    session = coa.Session("alice@isp", "81a00005", framed_ip="10.0.0.7", nas_ip="192.0.2.1")
    client = coa.Client(timeout=0.2, retries=2, backoff=0)
    with ForgingNas(NAS_SECRET, mode) as nas:
        result = client.change_rate(coa.Nas("127.0.0.1", NAS_SECRET, nas.port), session, "1M/2M")
        disconnect = client.disconnect(coa.Nas("127.0.0.1", NAS_SECRET, nas.port), session)
    assert (result.outcome, disconnect.outcome) == (outcome, outcome)
    if outcome == coa.TIMEOUT:
        assert "invalid replies ignored, wrong secret?" in result.detail
    assert NAS_SECRET not in result.detail + disconnect.detail
    assert len(nas.requests) == (2 if outcome == coa.ACK else 4)
    for request in nas.requests:  # every request is signed: RFC 5176 authenticator and Message-Authenticator
        assert request.VerifyCoARequest() and request.message_authenticator
        assert request.verify_message_authenticator()


# --------------------------------------------------------------------------- templates in the sandbox

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ customer.__class__ }}",
    "{{ customer.update({'name': 'mallory'}) }}",
    "{% set x = customer.pop('name') %}{{ x }}",
    "{{ usage.__getitem__('used') }}",
    "{{ (customer.items()|list)[0].__class__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{% if ''.__class__ is defined %}reached{% endif %}",
    "{{ ''|attr('__class__') }}",
    "{{ range.__call__ }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_templates_cannot_reach_python_internals(template):
    service = {"id": 7, "username": "alice@isp", "description": "Home"}
    customer = {"id": 3, "name": "Alice", "email": "a@example.net"}
    context = notification_context(service, customer, "Home 10GB", 1, 2)
    with pytest.raises(ValueError, match="unsafe|not safely") as raised:
        render_message("subject", template, context)
    assert str(raised.value).startswith("template ")
    with pytest.raises(ValueError, match="unsafe|not safely"):
        templates.render(template, size="1 GB", service=service, customer=customer)
    with pytest.raises(ValueError, match="unsafe|not safely"):
        templates.check(template, **context)  # what capctl tries before it stores a template
    assert customer == {"id": 3, "name": "Alice", "email": "a@example.net"}  # nothing was changed


def test_plain_templates_still_render_and_check():
    context = notification_context({"description": "Home"}, {"name": "Alice"}, "Home 10GB", 8 * GB, 10 * GB)
    assert render_message("{{ usage.percent }}% of {{ plan }}", "Hi {{ customer.name|upper }}, "
                          "{{ usage.remaining_text }} left of {{ service.description }}.", context) == (
        "80% of Home 10GB", "Hi ALICE, 2 GB left of Home.")
    templates.check("{{ size }} {{ nothing.defined.here }} {{ customer._private }}", customer={})  # not unsafe


def test_an_unsafe_template_in_the_database_fails_its_notification_not_the_enforcer(engine, world, smtp_server):
    """A rule edited in the database by hand (capctl refuses it): the enforcer runs on, sends the
    CAP action and the other notification, and gives that one a clear reason."""
    port, inbox = smtp_server()
    with engine.begin() as conn:
        store.set_time_frames(conn, world["plan_id"], [])
        bad = store.add_notification_rule(conn, world["plan_id"], "monthly", 90, "email", "cap",
                                          "{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    with NasSimulator(secret=NAS_SECRET) as sim:
        with engine.begin() as conn:
            store.add_nas(conn, "127.0.0.1", NAS_SECRET, "sim", "mikrotik", sim.port)
        apply(engine, *session_stream(NOW, [(11 * GB, 0)], nas="127.0.0.1"))
        run = Enforcer(engine, EnforcerConfig(node="e1", coa_timeout=0.3, coa_attempts=1,
                                              smtp=Smtp(host="127.0.0.1", port=port, timeout=5)),
                       coa.Client(timeout=0.3, retries=1, backoff=0), Clock(NOW + timedelta(minutes=30)))
        done = run.run_once()
        assert len(sim.requests) == 1
    assert done["actions"] >= 1 and done["notifications"] == 2
    with engine.begin() as conn:
        actions = store.list_actions(conn, world["service_id"])
    by_rule = {a["rule_id"]: a for a in actions if a["kind"] == "notify"}
    # Failed at once: the same template fails the same way at every retry.
    assert by_rule[bad]["status"] == "failed" and "unsafe" in by_rule[bad]["result"]
    assert by_rule[bad]["attempts"] == 1
    assert [a["status"] for a in actions if a["kind"] == "reduce"] == ["done"]
    assert len(inbox.envelopes) == 1 and "80% of Home internet" in inbox.body()  # the world's own rule


# --------------------------------------------------------------------------- the module's own log lines

@pytest.mark.parametrize("mode", ["sync", "journal"])
def test_module_log_lines_name_the_outage_but_not_the_password(adapter, mode):
    """What rlm_cap logs through radiusd.radlog, the database refusing the password."""
    freeradius, radiusd = adapter(f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:3306/rlm_cap_test",
                                  mode=mode)
    interim = (("User-Name", "alice@isp"), ("NAS-IP-Address", "192.0.2.1"), ("Acct-Status-Type", "Interim-Update"),
               ("Acct-Session-Id", "s1"), ("Acct-Output-Octets", "100"))
    wait_for(lambda: any("database unavailable" in m for _, m in radiusd.logged), timeout=10, what="the outage")
    expected = radiusd.RLM_MODULE_OK if mode == "journal" else radiusd.RLM_MODULE_REJECT  # sync: no answer
    assert freeradius.accounting(interim) == expected
    logged = "\n".join(m for _, m in radiusd.logged)
    assert "Access denied" in logged and "rlm_cap_test:***@127.0.0.1" in logged
    assert DB_PASSWORD not in logged


def test_a_log_line_that_quotes_the_password_is_scrubbed(adapter):
    """Guard against a driver or a bug putting the password into a message."""
    freeradius, radiusd = adapter(f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@127.0.0.1:3306/rlm_cap_test")
    freeradius._log("error", f"rlm_cap: connect failed with password {DB_PASSWORD!r}")
    assert "rlm_cap: connect failed with password '***'" in [m for _, m in radiusd.logged]
    assert DB_PASSWORD not in "\n".join(m for _, m in radiusd.logged)


def test_module_refuses_a_database_url_with_an_unescaped_at(monkeypatch, tmp_path):
    import importlib

    from .test_fuzz_module import FakeRadiusd
    fake = FakeRadiusd({"db_url": f"mysql+pymysql://rlm_cap_test:{DB_PASSWORD}@tail@127.0.0.1:3306/x",
                        "journal_dir": str(tmp_path / "journal")})
    monkeypatch.setitem(sys.modules, "radiusd", fake)
    monkeypatch.delitem(sys.modules, "rlm_cap.freeradius", raising=False)
    freeradius = importlib.import_module("rlm_cap.freeradius")
    try:
        assert freeradius.instantiate(None) == -1
    finally:
        sys.modules.pop("rlm_cap.freeradius", None)
    [(level, message)] = fake.logged
    assert level == fake.L_ERR and "more than one '@'" in message
    assert DB_PASSWORD not in message and "tail" not in message
