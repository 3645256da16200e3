"""A RouterOS-like NAS that answers CoA and Disconnect requests, for tests and the demo.

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
        client.disconnect(Nas("127.0.0.1", "s3cret", coa_port=nas.port), session)
        assert nas.requests[0]["attributes"]["User-Name"] == ["alice"]
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import OrderedDict
from importlib.resources import files

from pyrad import dictionary, packet, server

BEHAVIOURS = ("ack", "nak", "silent", "bad-authenticator", "bad-message-authenticator")
logger = logging.getLogger("tests.nas_simulator")

NAKS = {packet.CoARequest: packet.CoANAK, packet.DisconnectRequest: packet.DisconnectNAK}


class NasSimulator(server.Server):
    """pyrad's server with CoA only, run in a background thread that stops on request.

    pyrad's own ``Run()`` loops forever; ``_serve`` is the same loop with a
    poll timeout, so the context manager can stop it within ~50 ms.
    """

    def __init__(self, secret: str = "testing123", port: int = 0, behaviour: str = "ack",
                 error_cause: int = 503, dictionary_path: str | None = None):
        path = dictionary_path or str(files("rlm_cap") / "dictionary")
        super().__init__(coaport=port, dict=dictionary.Dictionary(path),
                         auth_enabled=False, acct_enabled=False, coa_enabled=True,
                         hosts={"127.0.0.1": server.RemoteHost("127.0.0.1", secret.encode(), "nas")},
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
        ``message_authenticator`` (present?) and ``message_authenticator_valid``
        (None when absent)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> NasSimulator:
        self.BindToAddress("127.0.0.1")
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
            })
        return authenticator_valid and ma_valid is not False
