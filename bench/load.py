"""A bounded accounting load generator for loopback benchmarks (raw UDP, pre-encoded).

Realistic sessions: each subscriber's Start, then Interim-Updates whose
counters grow by ``step`` bytes and pass 2^32 (Gigawords), in the order a busy
NAS interleaves them. Every request is encoded before the clock starts, so the
generator spends its time sending and receiving, not building packets.

Two ways to send, both bounded by the packet count and a time limit:
- ``closed_loop``: ``window`` requests in flight, the next one sent as soon as
  one is answered: the highest rate the server sustains.
- ``paced``: requests at a fixed rate whatever the answers (up to 1,024 in
  flight): the latency at a given load.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from dataclasses import dataclass, field

from pyrad import packet as radius_packet

from cli.lab import DICTIONARY, SECRET
STEP = 200_000_000  # bytes per interim: a session's counters pass 2^32 after 22 interims
LOST_AFTER = 2.0  # seconds without an answer: the request counts as lost


def user(u: int) -> str:
    return f"user{u}"


def session_of(u: int) -> str:
    return f"b{u:08x}"


def requests(count: int, users: int, step: int = STEP, nas: str = "192.0.2.1") -> list[bytes]:
    """Start of each user, then rounds of Interim-Updates (i = packet number, user = i % users)."""
    encoded = []
    for i in range(count):
        u, n = i % users, i // users
        request = radius_packet.AcctPacket(code=radius_packet.AccountingRequest, secret=SECRET, dict=DICTIONARY)
        request["User-Name"] = user(u)
        request["Acct-Session-Id"] = session_of(u)
        request["NAS-IP-Address"] = nas
        request["Framed-IP-Address"] = f"10.{u >> 16 & 255}.{u >> 8 & 255}.{u & 255}"
        if n == 0:
            request["Acct-Status-Type"] = "Start"
        else:
            down, up = n * step, n * step // 10
            request["Acct-Status-Type"] = "Interim-Update"
            request["Acct-Output-Octets"], request["Acct-Output-Gigawords"] = down % 2**32, down >> 32
            request["Acct-Input-Octets"], request["Acct-Input-Gigawords"] = up % 2**32, up >> 32
            request["Acct-Session-Time"] = n * 300
        request.id = i % 256
        encoded.append(request.RequestPacket())
    return encoded


def expected_download(count: int, users: int, step: int = STEP) -> int:
    """What the last interim of every session says it downloaded: the oracle of a run."""
    return sum(((count - 1 - u) // users) * step for u in range(min(users, count)))


@dataclass
class Result:
    sent: int = 0
    answered: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    @property
    def rate(self) -> float:
        return self.answered / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        """Latency in seconds at quantile ``q`` (0..1); NaN when nothing was answered."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _sockets(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def _run(port: int, datagrams: list[bytes], slots: int, time_limit: float, interval: float | None) -> Result:
    """One socket per slot, so RADIUS ids never clash; ``interval`` None = closed loop."""
    sockets = _sockets(port, slots)
    selector = selectors.DefaultSelector()
    for slot, s in enumerate(sockets):
        selector.register(s, selectors.EVENT_READ, slot)
    result = Result()
    free = list(range(slots - 1, -1, -1))
    in_flight: dict[int, float] = {}
    started = time.monotonic()
    deadline = started + time_limit
    try:
        while (result.sent < len(datagrams) or in_flight) and time.monotonic() < deadline:
            now = time.monotonic()
            due = len(datagrams) if interval is None else min(len(datagrams), int((now - started) / interval) + 1)
            while free and result.sent < due:
                slot = free.pop()
                sockets[slot].send(datagrams[result.sent])
                in_flight[slot] = time.monotonic()
                result.sent += 1
            wait = 0.05 if interval is None else max(0.0, min(0.05, started + result.sent * interval - now))
            for key, _ in selector.select(timeout=wait):
                try:
                    key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                sent_at = in_flight.pop(key.data, None)
                if sent_at is not None:
                    result.answered += 1
                    result.latencies.append(time.monotonic() - sent_at)
                    free.append(key.data)
            now = time.monotonic()
            for slot, sent_at in list(in_flight.items()):
                if now - sent_at > LOST_AFTER:  # lost; a late answer to this slot is ignored
                    del in_flight[slot]
                    free.append(slot)
    finally:
        result.elapsed = time.monotonic() - started
        selector.close()
        for s in sockets:
            s.close()
    return result


def closed_loop(port: int, datagrams: list[bytes], window: int = 32, time_limit: float = 120) -> Result:
    return _run(port, datagrams, window, time_limit, None)


def paced(port: int, datagrams: list[bytes], rate: float, time_limit: float = 120) -> Result:
    return _run(port, datagrams, 1024, time_limit, 1.0 / rate)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
