"""The lab: the whole rlm_cap stack on loopback, for ``make demo``, the end-to-end tests and bench/.

- :class:`FreeRadius`: ``capctl radius run`` in a subprocess (FreeRADIUS with
  ``freeradius-conf/`` and rlm_cap on free ports);
- :class:`CapEnforcer`: ``cap-enforcer run`` in a subprocess, with a config
  file of its own;
- :class:`Nas`: a MikroTik's RADIUS client: Accounting-Requests and logins
  sent to FreeRADIUS;
- :class:`NasSimulator`: a MikroTik's ``/radius incoming``: answers CoA and
  Disconnect requests and records them;
- :class:`MailSink`: an SMTP server that keeps every message it receives.

Everything listens on and talks to 127.0.0.1 only. A process started here is
ended by its own PID, never by name, and every wait is bounded. A wait that
runs out raises AssertionError, so a test using the lab fails with the reason.

Needs ``aiosmtpd`` for the mail sink (the ``test`` extra, which ``make venv``
installs).
"""

from __future__ import annotations

import email
import email.policy
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from pyrad import client as radius_client
from pyrad import dictionary, packet, server

PROJECT = Path(__file__).resolve().parent.parent
DICTIONARY = dictionary.Dictionary(str(PROJECT / "rlm_cap" / "dictionary"))
BIN = Path(sys.executable).parent  # the virtualenv's console scripts
CAPCTL = str(BIN / "capctl")
CAP_ENFORCER = str(BIN / "cap-enforcer")
SECRET = b"testing123"
LOOPBACK = "127.0.0.1"

logger = logging.getLogger(__name__)


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
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


def _end(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM to our own child, by PID; SIGKILL when it does not go in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# --------------------------------------------------------------------------- FreeRADIUS and cap-enforcer

class _Child:
    """A process of ours, ended by its PID."""

    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = 30) -> None:
        _end(self.process, timeout)


class FreeRadius(_Child):
    """``capctl radius run`` in a subprocess; its output kept for assertions."""

    def __init__(self, db_url: str, directory: Path, mode: str = "journal", node: str = "test",
                 journal_dir: Path | None = None, settings: dict[str, str] | None = None):
        self.db_url, self.directory, self.mode, self.node = db_url, Path(directory), mode, node
        self.journal_dir = journal_dir or self.directory.parent / f"{self.directory.name}-journal"
        self.settings = {"state_refresh": "0.2", "apply_interval": "0.01", **(settings or {})}
        self.auth_port, self.acct_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        """The command line and environment (None: ours) that run this FreeRADIUS."""
        argv = [CAPCTL, "--db", self.db_url, "radius", "run", "--auth-port", str(self.auth_port),
                "--acct-port", str(self.acct_port), "--mode", self.mode, "--dir", str(self.directory),
                "--journal-dir", str(self.journal_dir), "--node", self.node, "--secret", SECRET.decode()]
        for key, value in self.settings.items():
            argv += ["--set", f"{key}={value}"]
        return argv, None

    def start(self) -> "FreeRadius":
        argv, environment = self.command()
        self.output = []
        # A session of its own: a Ctrl-C at the terminal reaches only us, and we stop it in order.
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=environment, start_new_session=True)
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
        super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL, by PID: a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def quarantine(self) -> str:
        files = sorted((self.directory / "radacct").glob("rlm_cap-quarantine-*"))
        return "".join(f.read_text(errors="replace") for f in files)


class CapEnforcer(_Child):
    """``cap-enforcer run`` in a subprocess, configured by a file written for it.

    ``config`` is the INI text (enforcer/config.py documents every option); the
    file is written 0600 next to the log, since a real one holds passwords.
    """

    def __init__(self, directory: Path, config: str):
        self.directory = Path(directory)
        self.config_file = self.directory / "rlm_cap.conf"
        self.log_file = self.directory / "cap-enforcer.log"
        self.config = config
        self.process: subprocess.Popen | None = None

    def start(self) -> "CapEnforcer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.touch(mode=0o600)
        self.config_file.write_text(self.config)
        environment = dict(os.environ, RLM_CAP_CONFIG=str(self.config_file))
        environment.pop("RLM_CAP_DB_URL", None)  # the config file names the database
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen([CAP_ENFORCER, "run"], stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, start_new_session=True)

        def started():
            if self.process.poll() is not None:
                raise AssertionError("cap-enforcer exited:\n" + self.log)
            return " started" in self.log  # "node=... started": its scheduler is about to run the jobs
        wait_for(started, timeout=30, what="cap-enforcer to start")
        return self

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


# --------------------------------------------------------------------------- the NAS: accounting out, CoA in

@dataclass
class Nas:
    """A NAS that sends accounting and logins to FreeRADIUS, like a MikroTik does."""

    radius: FreeRadius
    address: str = "192.0.2.1"
    timeout: float = 2.0
    retries: int = 1  # pyrad: attempts in all, not retransmissions
    answered: list = field(default_factory=list)

    def _client(self) -> radius_client.Client:
        c = radius_client.Client(server=LOOPBACK, authport=self.radius.auth_port,
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
        ok = reply.code == packet.AccountingResponse
        if ok:
            self.answered.append((status, session, user, down, up))
        return ok

    def login(self, user: str, password: str = "secret"):
        """Access-Request; the reply packet (code, attributes)."""
        c = self._client()
        request = c.CreateAuthPacket(code=packet.AccessRequest, User_Name=user)
        request["User-Password"] = request.PwCrypt(password)
        request["NAS-IP-Address"] = self.address
        return c.SendPacket(request)


BEHAVIOURS = ("ack", "nak", "silent", "bad-authenticator", "bad-message-authenticator")
NAKS = {packet.CoARequest: packet.CoANAK, packet.DisconnectRequest: packet.DisconnectNAK}


class NasSimulator(server.Server):
    """A RouterOS-like NAS that answers CoA and Disconnect requests.

    It listens on 127.0.0.1 (a free port unless one is given), records every
    request it receives and answers according to ``behaviour``, which may be
    changed while it runs:

    - ``"ack"``: CoA-ACK / Disconnect-ACK;
    - ``"nak"``: CoA-NAK / Disconnect-NAK with Error-Cause ``error_cause``
      (default 503, Session-Context-Not-Found: what RouterOS says for a session
      it does not know);
    - ``"silent"``: no answer at all;
    - ``"bad-authenticator"``: an ACK whose Response Authenticator is corrupted;
    - ``"bad-message-authenticator"``: an ACK with a correct Response
      Authenticator but a wrong Message-Authenticator (a forged reply).

    Like a real NAS it drops, after recording, a request whose Request
    Authenticator or Message-Authenticator does not verify (a wrong secret).

        with NasSimulator(secret="s3cret") as nas:
            enforcer.coa.Client().disconnect(enforcer.coa.Nas("127.0.0.1", "s3cret", coa_port=nas.port), session)
            assert nas.requests[0]["attributes"]["User-Name"] == ["alice"]

    pyrad's own ``Run()`` loops forever; ``_serve`` is the same loop with a
    poll timeout, so the context manager can stop it within ~50 ms.
    """

    def __init__(self, secret: str = SECRET.decode(), port: int = 0, behaviour: str = "ack",
                 error_cause: int = 503, dictionary_path: str | None = None):
        path = dictionary_path or str(PROJECT / "rlm_cap" / "dictionary")
        super().__init__(coaport=port, dict=dictionary.Dictionary(path),
                         auth_enabled=False, acct_enabled=False, coa_enabled=True,
                         hosts={LOOPBACK: server.RemoteHost(LOOPBACK, secret.encode(), "nas")},
                         enable_pkt_verify=False)  # we verify, record, then drop
        self.behaviour = behaviour
        self.error_cause = error_cause
        self._lock = threading.Lock()
        self._requests: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def behaviour(self) -> str:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, value: str) -> None:
        if value not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, not {value!r}")
        self._behaviour = value

    @property
    def port(self) -> int:
        return self.coaport

    @property
    def requests(self) -> list[dict]:
        """What was received, oldest first: dicts with ``code``, ``id``, ``raw``
        (the datagram), ``attributes`` (name -> list of values), ``authenticator_valid``,
        ``message_authenticator`` (present?), ``message_authenticator_valid``
        (None when absent) and ``answer`` (the reply's code, None when not answered)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> NasSimulator:
        self.BindToAddress(LOOPBACK)
        self.coaport = self.coafds[0].getsockname()[1]  # the free port the kernel chose
        self._thread = threading.Thread(target=self._serve, name=f"nas-simulator-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in self.coafds:
            fd.close()
        self.coafds = []

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.coafds, [], [], 0.05)
            for fd in ready:
                try:
                    self._ProcessInput(fd)
                except (server.ServerPacketError, packet.PacketError):
                    pass  # unknown client or garbage: a NAS drops it
                except Exception:  # noqa: BLE001 - like pyrad's Run(): log, keep serving
                    logger.exception("NAS simulator failed to handle a packet")

    # -- requests --------------------------------------------------------

    def HandleCoaPacket(self, pkt: packet.CoAPacket) -> None:
        self._answer(pkt)

    def HandleDisconnectPacket(self, pkt: packet.CoAPacket) -> None:
        self._answer(pkt)

    def _answer(self, pkt: packet.CoAPacket) -> None:
        authentic = self._record(pkt)
        behaviour, error_cause = self.behaviour, self.error_cause
        if not authentic or behaviour == "silent":
            return
        reply = self.CreateReplyPacket(pkt)
        if behaviour == "nak":
            reply.code = NAKS[pkt.code]
            reply["Error-Cause"] = error_cause
        if behaviour == "bad-message-authenticator":
            OrderedDict.__setitem__(reply, 80, [bytes(16)])  # kept as is when encoded
            OrderedDict.move_to_end(reply, 80, last=False)
        else:
            reply.add_message_authenticator()  # computed over the request's authenticator when encoded
        data = reply.ReplyPacket()
        if behaviour == "bad-authenticator":
            data = data[:4] + bytes(b ^ 0xFF for b in data[4:20]) + data[20:]
        with self._lock:
            self._requests[-1]["answer"] = reply.code  # before sending: the sender may look right after
        pkt.fd.sendto(data, pkt.source)

    def _record(self, pkt: packet.CoAPacket) -> bool:
        """Record the request; return whether it is authentic (secret matches)."""
        authenticator_valid = pkt.VerifyCoARequest()
        has_ma = bool(pkt.message_authenticator)
        ma_valid = pkt.verify_message_authenticator() if has_ma else None
        attributes = {}
        for key in pkt.keys():
            try:
                attributes[key] = list(pkt[key])
            except Exception:  # noqa: BLE001 - undecodable value: keep the raw octets
                attributes[key] = list(OrderedDict.__getitem__(pkt, pkt._EncodeKey(key)))
        with self._lock:
            self._requests.append({
                "code": pkt.code,
                "id": pkt.id,
                "raw": pkt.raw_packet,
                "attributes": attributes,
                "authenticator_valid": authenticator_valid,
                "message_authenticator": has_ma,
                "message_authenticator_valid": ma_valid,
                "received_at": time.monotonic(),
                "answer": None,
            })
        return authenticator_valid and ma_valid is not False


# --------------------------------------------------------------------------- mail

class MailSink:
    """An SMTP server on 127.0.0.1 that accepts every message and keeps it.

        with MailSink() as sink:
            ...  # [smtp] host = 127.0.0.1, port = sink.port
            assert sink.messages[0]["Subject"] == "80% of your data used"
    """

    def __init__(self):
        self.port = free_port(socket.SOCK_STREAM)
        self._lock = threading.Lock()
        self._messages: list[email.message.EmailMessage] = []
        self._controller = Controller(self, hostname=LOOPBACK, port=self.port, server_hostname="mx.lab",
                                      ready_timeout=5)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self._messages.append(message)
        return "250 Message accepted"

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        """Every message received, oldest first."""
        with self._lock:
            return list(self._messages)

    def __enter__(self) -> MailSink:
        self._controller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._controller.stop()
