"""RFC 5176 Dynamic Authorization client: CoA-Request and Disconnect-Request.

The enforcer uses it to slow a subscriber down (a new rate in a CoA-Request)
or to end a session (Disconnect-Request) once a cap is reached.

pyrad encodes and verifies the packets; the exchange (one UDP socket per
request, retries, backoff) is our own, because pyrad's blocking client has no
backoff between attempts and no public way to close its socket.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from importlib.resources import files

from pyrad import dictionary as pyrad_dictionary
from pyrad import packet

ACK, NAK, TIMEOUT = "ack", "nak", "timeout"
SESSION_NOT_FOUND = 503  # Error-Cause Session-Context-Not-Found

DEFAULT_RATE_ATTRIBUTES = {"mikrotik": "Mikrotik-Rate-Limit"}

logger = logging.getLogger("enforcer.coa")

_ERROR_CAUSE = 101  # attribute code; read raw so unknown causes keep their number
_REQUEST_NAMES = {packet.CoARequest: "CoA-Request", packet.DisconnectRequest: "Disconnect-Request"}
_REPLY_NAMES = {packet.CoAACK: "CoA-ACK", packet.CoANAK: "CoA-NAK",
                packet.DisconnectACK: "Disconnect-ACK", packet.DisconnectNAK: "Disconnect-NAK"}
# RFC 5176 section 3: which replies answer which request, and what they mean
_OUTCOMES = {packet.CoARequest: {packet.CoAACK: ACK, packet.CoANAK: NAK},
             packet.DisconnectRequest: {packet.DisconnectACK: ACK, packet.DisconnectNAK: NAK}}


@dataclass(frozen=True)
class Nas:
    """One row of FreeRADIUS's ``nas`` table, plus CoA port and type."""

    address: str    # nasname: the NAS's IP address
    secret: str
    coa_port: int = 3799   # RouterOS's /radius incoming defaults to 1700
    type: str = "mikrotik"

    def __repr__(self) -> str:
        # keep the secret out of tracebacks and log lines that format a Nas
        return f"Nas(address={self.address!r}, coa_port={self.coa_port!r}, type={self.type!r})"


@dataclass(frozen=True)
class Session:
    """What identifies a subscriber's session on the NAS.

    RouterOS matches User-Name + Acct-Session-Id; the IP addresses narrow it
    further (a Hotspot DM with only a MAC User-Name may otherwise hit the
    wireless client).
    """

    username: str
    acct_session_id: str
    framed_ip: str | None = None
    nas_ip: str | None = None


@dataclass(frozen=True)
class Result:
    """The NAS's answer, or the lack of one."""

    outcome: str                 # ACK, NAK or TIMEOUT
    error_cause: int | None = None
    detail: str = ""             # human readable; never contains the secret

    @property
    def session_gone(self) -> bool:
        """The NAS no longer knows the session: stop trying, it has ended."""
        return self.outcome == NAK and self.error_cause == SESSION_NOT_FOUND


class Client:
    """Sends CoA and Disconnect requests to NASes, one blocking request at a time.

    Safe to share between threads: every request has its own socket.
    """

    def __init__(self, timeout: float = 2.0, retries: int = 3, backoff: float = 0.5,
                 rate_attributes: dict[str, str] | None = None, dictionary: str | None = None):
        """
        :param timeout: seconds to wait for a reply after each send
        :param retries: number of sends in all (at least 1)
        :param backoff: pause before the second send; doubled before each further one
        :param rate_attributes: NAS type -> reply attribute carrying a rate; merged
            over the default ``{"mikrotik": "Mikrotik-Rate-Limit"}``, whose entry
            also serves NAS types not listed
        :param dictionary: path of a pyrad dictionary, default rlm_cap's own
        :raise ValueError: a bad number, or a rate attribute the dictionary lacks
            (caught here rather than at the first cap enforcement)
        """
        if timeout <= 0 or retries < 1 or backoff < 0:
            raise ValueError("timeout must be > 0, retries >= 1 and backoff >= 0")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.rate_attributes = {**DEFAULT_RATE_ATTRIBUTES, **(rate_attributes or {})}
        path = dictionary or str(files("rlm_cap") / "dictionary")
        self.dictionary = pyrad_dictionary.Dictionary(path)
        for name in self.rate_attributes.values():
            if name not in self.dictionary.attributes:
                raise ValueError(f"rate attribute {name!r} is not in the dictionary {path}")

    def rate_attribute(self, nas_type: str) -> str:
        """The attribute that carries a rate for this NAS type."""
        return self.rate_attributes.get(nas_type, self.rate_attributes["mikrotik"])

    def change_rate(self, nas: Nas, session: Session, rate: str) -> Result:
        """Send a CoA-Request that sets the session's rate (e.g. ``"5M/10M"``)."""
        request = self._request(packet.CoARequest, nas, session)
        request[self.rate_attribute(nas.type)] = rate
        return self._exchange(nas, session, request)

    def disconnect(self, nas: Nas, session: Session) -> Result:
        """Send a Disconnect-Request that ends the session."""
        return self._exchange(nas, session, self._request(packet.DisconnectRequest, nas, session))

    def _request(self, code: int, nas: Nas, session: Session) -> packet.CoAPacket:
        """A request identifying the session, with a Message-Authenticator.

        The Message-Authenticator is the Blast-RADIUS (CVE-2024-3596)
        countermeasure; pyrad computes it when the packet is encoded.
        A value that cannot be encoded (a bad IP address) raises ValueError:
        that is a data error for the caller, not a network failure.
        """
        request = packet.CoAPacket(code=code, secret=nas.secret.encode(), dict=self.dictionary)
        request.add_message_authenticator()
        request["User-Name"] = session.username
        request["Acct-Session-Id"] = session.acct_session_id
        if session.nas_ip:
            request["NAS-IP-Address"] = session.nas_ip
        if session.framed_ip:
            request["Framed-IP-Address"] = session.framed_ip
        return request

    def _exchange(self, nas: Nas, session: Session, request: packet.CoAPacket) -> Result:
        """Send ``request`` up to ``retries`` times; map the first valid reply.

        Every send is byte-identical (same id, same authenticator), as RFC
        5176 wants for retransmissions, so a late reply to an earlier send
        still counts; we also keep listening during the backoff pause.
        """
        what = f"{_REQUEST_NAMES[request.code]} to {nas.address}:{nas.coa_port} for {session.username!r}"
        data = request.RequestPacket()
        ignored = refused = 0
        try:
            family, _, _, _, address = socket.getaddrinfo(
                nas.address, nas.coa_port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                # connected, so an ICMP port-unreachable shows as ConnectionRefusedError
                # and only datagrams from the NAS's address and port are received
                sock.connect(address)
                for attempt in range(1, self.retries + 1):
                    _send(sock, data)
                    reply, bad, no_port = self._await(sock, request, self.timeout)
                    if reply is None and attempt < self.retries:
                        pause = self.backoff * 2 ** (attempt - 1)
                        reply, more_bad, more_no_port = self._await(sock, request, pause)
                        bad, no_port = bad + more_bad, no_port or more_no_port
                    ignored, refused = ignored + bad, refused + no_port
                    if reply is not None:
                        return self._result(request, reply, nas)
                    logger.warning("%s", _scrub(f"{what}: attempt {attempt}/{self.retries} got no "
                                                f"valid reply{_why(bad, no_port)}", nas.secret))
        except OSError as error:
            reason = error.strerror or type(error).__name__
            return Result(TIMEOUT, detail=_scrub(f"{what}: network error: {reason}", nas.secret))
        return Result(TIMEOUT, detail=_scrub(
            f"{what}: no valid reply after {self.retries} attempts{_why(ignored, refused)}", nas.secret))

    def _await(self, sock: socket.socket, request: packet.CoAPacket, seconds: float):
        """Wait up to ``seconds`` for a valid reply to ``request``.

        Returns (reply or None, replies ignored, whether the port was
        unreachable). A reply that does not decode, answers another request,
        or whose Response Authenticator or Message-Authenticator does not
        verify is ignored, as if it never came: it may be forged.
        """
        deadline = time.monotonic() + seconds
        ignored, refused = 0, False
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                refused = True
                continue
            try:
                reply = request.CreateReply(packet=data)
                if reply.code in _OUTCOMES[request.code] and request.VerifyReply(reply, data):
                    return reply, ignored, refused
            except Exception:  # noqa: BLE001 - any undecodable datagram is just noise
                pass
            ignored += 1
        return None, ignored, refused

    def _result(self, request: packet.CoAPacket, reply: packet.CoAPacket, nas: Nas) -> Result:
        outcome = _OUTCOMES[request.code][reply.code]
        detail = _REPLY_NAMES[reply.code]
        cause = None
        raw = reply.get(_ERROR_CAUSE)
        if raw and len(raw[0]) == 4:
            cause = int.from_bytes(raw[0], "big")
            name = reply["Error-Cause"][0]
            detail += f" {name} ({cause})" if isinstance(name, str) else f" Error-Cause {cause}"
        elif outcome == NAK:
            detail += " without Error-Cause"
        return Result(outcome, cause, _scrub(detail, nas.secret))


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except ConnectionRefusedError:
        # the ICMP error of an earlier send, reported late; it is consumed now
        sock.send(data)


def _why(ignored: int, refused: bool) -> str:
    """Explain a failed attempt: a wrong secret and a closed port look alike otherwise."""
    reasons = []
    if ignored:
        reasons.append(f"{ignored} invalid repl{'y' if ignored == 1 else 'ies'} ignored, wrong secret?")
    if refused:
        reasons.append("port unreachable")
    return f" ({'; '.join(reasons)})" if reasons else ""


def _scrub(text: str, secret: str) -> str:
    """Belt and braces: no path may put the shared secret into a detail."""
    return text.replace(secret, "***") if secret else text
