"""Soak: a long, bounded stream of valid and fuzzed Accounting-Requests through real
FreeRADIUS with rlm_cap (journal mode), on loopback only.

    .venv/bin/python -m bench.soak --db mariadb --count 100000
    .venv/bin/python -m bench.soak --db sqlite --count 300 --seed 7

``--db``: ``sqlite`` (a temporary file), ``mariadb`` (a temporary database on the
test server, RLM_CAP_TEST_MARIADB_URL or the rlm_cap_test account on
127.0.0.1:3306, dropped at the end) or a URL of a database this run may wipe.

What is sent, with ``--window`` requests in flight (one UDP socket per slot):

- **valid**: the sessions of many NAS (tests/conservation.py's generator):
  Gigawords past 2^32, CAP crossings, 10 % retransmits, 10 % reordering,
  Interims after Stops, sessions without Start, one reboot per NAS (Accounting-On
  twice, then the same Acct-Session-Id values again). A session's packets are
  sent one after the other (each once the previous is answered, the order the
  faults gave them); a NAS's reboot waits for its sessions before it, as on a
  real NAS. An unanswered valid packet is retransmitted, as a NAS does.
- **fuzz**: well-framed packets with random, missing, duplicated, huge and
  non-numeric attribute values (integers of the wrong length), random bytes in
  strings (invalid UTF-8 too), 2^64 counters, unknown Acct-Status-Type values and
  unknown attributes. They use User-Names and NAS addresses of their own, never a
  valid session's; about half are for "fuzz services" that exist, so the bad
  values reach the ledger. Every one must be answered (rlm_cap answers, or its
  guard quarantines).
- **garbage**: datagrams that are not RADIUS (bad length, truncated, random,
  wrong authenticator) or carry more than FreeRADIUS's ``max_attributes`` (200);
  FreeRADIUS must drop them and live on. Sent from a socket
  of their own, never waited for.

At the end: FreeRADIUS must be alive and answer a Status-Server and a valid
request (crashes=0); the valid sessions' usage must equal the oracle of
tests/conservation.py per user, direction and session; the fuzz services must
keep "every counted byte in one bucket, over-use or free". The last line is the
result; the exit status is 0 only when everything held.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import random
import selectors
import socket
import struct
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from rlm_cap import store
from tests import conservation as c
from cli.lab import SECRET, FreeRadius

# RFC 2865/2866/2869 attribute numbers
USER_NAME, NAS_IP, FRAMED_IP, NAS_ID, STATUS, DELAY, IN_OCTETS, OUT_OCTETS, SESSION_ID = 1, 4, 8, 32, 40, 41, 42, 43, 44
SESSION_TIME, IN_GIGA, OUT_GIGA, EVENT_TIME, MESSAGE_AUTHENTICATOR, NAS_IPV6 = 46, 52, 53, 55, 80, 95
STATUS_VALUES = {"Start": 1, "Stop": 2, "Interim-Update": 3, "Accounting-On": 7, "Accounting-Off": 8}
NUMBERS = {"Acct-Delay-Time": DELAY, "Acct-Input-Octets": IN_OCTETS, "Acct-Output-Octets": OUT_OCTETS,
           "Acct-Session-Time": SESSION_TIME, "Acct-Input-Gigawords": IN_GIGA, "Acct-Output-Gigawords": OUT_GIGA}
ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE, STATUS_SERVER = 4, 5, 12

VALID, FUZZ, GARBAGE = "valid", "fuzz", "garbage"
MAX_ATTRIBUTES = 200  # FreeRADIUS's security { max_attributes }: a packet with more is dropped, by design


# --------------------------------------------------------------------------- encoding

def attribute(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def encode_packet(p: c.Packet) -> bytes:
    """The attributes of a valid packet, as FreeRADIUS's dictionary types them."""
    out = []
    for name, value in p.attributes():
        if name == "Acct-Status-Type":
            out.append(attribute(STATUS, u32(STATUS_VALUES[value])))
        elif name == "NAS-IP-Address":
            out.append(attribute(NAS_IP, socket.inet_aton(value)))
        elif name == "User-Name":
            out.append(attribute(USER_NAME, value.encode()))
        elif name == "Acct-Session-Id":
            out.append(attribute(SESSION_ID, value.encode()))
        else:
            out.append(attribute(NUMBERS[name], u32(value)))
    return b"".join(out)


def accounting_request(identifier: int, attributes: bytes, secret: bytes = SECRET) -> bytes:
    """RFC 2866: the Request Authenticator is MD5(code id length 0*16 attributes secret)."""
    header = struct.pack("!BBH", ACCOUNTING_REQUEST, identifier, 20 + len(attributes))
    authenticator = hashlib.md5(header + bytes(16) + attributes + secret).digest()
    return header + authenticator + attributes


def reply_matches(reply: bytes, request: bytes, secret: bytes = SECRET) -> bool:
    """An Accounting-Response to ``request`` whose Response Authenticator verifies."""
    if len(reply) < 20 or reply[0] != ACCOUNTING_RESPONSE or reply[1] != request[1]:
        return False
    length = struct.unpack("!H", reply[2:4])[0]
    expected = hashlib.md5(reply[:4] + request[4:20] + reply[20:length] + secret).digest()
    return hmac.compare_digest(expected, reply[4:20])


def status_server(port: int, timeout: float = 2.0, secret: bytes = SECRET) -> bool:
    """RFC 5997 Status-Server to the accounting port: answered with an Accounting-Response?"""
    authenticator = os.urandom(16)
    attributes = attribute(MESSAGE_AUTHENTICATOR, bytes(16))
    header = struct.pack("!BBH", STATUS_SERVER, 77, 20 + len(attributes))
    signature = hmac.new(secret, header + authenticator + attributes, hashlib.md5).digest()
    datagram = header + authenticator + attribute(MESSAGE_AUTHENTICATOR, signature)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(datagram)
        try:
            reply = sock.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return len(reply) >= 20 and reply[0] == ACCOUNTING_RESPONSE and reply[1] == 77


def describe(attributes: bytes) -> str:
    """The attributes as (number, hex value) pairs, for a report."""
    pairs, i = [], 0
    while i + 2 <= len(attributes):
        kind, length = attributes[i], attributes[i + 1]
        pairs.append(f"{kind}={attributes[i + 2:i + length].hex()}")
        i += max(length, 2)
    return " ".join(pairs)


# --------------------------------------------------------------------------- what is sent

@dataclass
class Lane:
    """One session key's packets, sent in order; ``after``: lanes that must finish first."""

    packets: list[bytes]
    after: set[int] = field(default_factory=set)
    index: int = 0


def valid_traffic(rng: random.Random, target: int, users_per_nas: int = 50) -> tuple[list[c.Packet], list[Lane]]:
    """Whole NAS (boot, reboot, boot) until ``target`` packets: the stream and its lanes."""
    stream: list[c.Packet] = []
    lanes: list[Lane] = []
    nas_number = 0
    while len(stream) < target:
        nas = f"10.0.{nas_number // 250}.{nas_number % 250 + 1}"
        users = [f"soak-n{nas_number}-u{i}" for i in range(users_per_nas)]
        boots = [c.faulty_boot(rng, nas, users, heavy=users[:2]) for _ in range(2)]
        first = _lanes(boots[0], lanes, set())
        reboot = len(lanes)
        lanes.append(Lane([encode_packet(c.reboot(nas))] * 2, after=first))
        _lanes(boots[1], lanes, {reboot})
        stream += boots[0] + [c.reboot(nas), c.reboot(nas)] + boots[1]
        nas_number += 1
    return stream, lanes


def _lanes(packets: list[c.Packet], lanes: list[Lane], after: set[int]) -> set[int]:
    by_key: dict[tuple, list[bytes]] = {}
    for p in packets:
        by_key.setdefault(p.key, []).append(encode_packet(p))
    first = len(lanes)
    lanes += [Lane(encoded, set(after)) for encoded in by_key.values()]
    return set(range(first, len(lanes)))


def valid_users(stream: list[c.Packet]) -> list[str]:
    return sorted({p.user for p in stream if p.user})


FUZZ_SERVICES = [f"soak-fuzz{i}" for i in range(50)]


def _fuzz_nas(rng: random.Random) -> bytes:
    address = bytearray(rng.randbytes(4))
    if address[0] == 10:  # 10.0.0.0/8 is the valid NAS's
        address[0] = 11
    return bytes(address)


def _garbage_string(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 253))  # random bytes, invalid UTF-8 mostly
    if kind == 1:
        return "".join(chr(rng.choice([rng.randint(1, 0x7F), rng.randint(0x80, 0x10FFFF)]))
                       for _ in range(rng.randint(1, 40))).encode("utf-8", "replace")[:253]
    if kind == 2:
        return b"x" * 253  # the longest an attribute holds
    if kind == 3:
        return rng.choice([b"", b"\x00", b"a\x00b", b"\xff\xfe", b"%{exec:/bin/true}", b"'; DROP TABLE services; --"])
    return str(rng.randint(0, 10**30)).encode()


def _huge_or_odd_number(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return u32(0xFFFFFFFF)
    if kind == 1:
        return u32(rng.randrange(2**32))
    if kind == 2:
        return rng.randbytes(rng.choice([1, 2, 3, 5, 8, 16]))  # not 4 bytes: FreeRADIUS keeps it raw
    if kind == 3:
        return b"12345"  # digits as text in an integer attribute
    if kind == 4:
        return u32(0)
    return u32(2**31)


def fuzz_packet(rng: random.Random, n: int) -> bytes:
    """The attributes of one fuzzed, well-framed Accounting-Request.

    Session totals go up to 2^64 - 1: beyond packets.MAX_TOTAL (2^53) they are
    refused as malformed, so no sum of a period can overflow its column."""
    service = rng.random() < 0.5
    user = rng.choice(FUZZ_SERVICES).encode() if service else f"soak-unknown-{n % 977}".encode()
    status = rng.choice([1, 2, 3, 3, 3, 7, 8])
    attrs: list[tuple[int, bytes]] = [
        (STATUS, u32(status)), (NAS_IP, _fuzz_nas(rng)), (USER_NAME, user),
        (SESSION_ID, f"fz{rng.randrange(200)}".encode()),
        (IN_OCTETS, u32(rng.randrange(2**32))), (IN_GIGA, u32(rng.randrange(4))),
        (OUT_OCTETS, u32(rng.randrange(2**32))), (OUT_GIGA, u32(rng.randrange(4))),
        (SESSION_TIME, u32(rng.randrange(100_000)))]
    for _ in range(rng.randint(1, 4)):
        mutation = rng.randrange(12)
        if mutation == 0:  # an attribute missing
            attrs.pop(rng.randrange(len(attrs)))
        elif mutation == 1:  # an attribute twice, another value
            kind, value = rng.choice(attrs) if attrs else (STATUS, u32(3))
            attrs.insert(rng.randrange(len(attrs) + 1), (kind, _huge_or_odd_number(rng) if len(value) == 4
                                                          else _garbage_string(rng)))
        elif mutation == 2:  # 2^64 - 1 (or near 2^63) counters
            octets, giga = (IN_OCTETS, IN_GIGA) if rng.random() < 0.5 else (OUT_OCTETS, OUT_GIGA)
            attrs = [a for a in attrs if a[0] not in (octets, giga)]
            attrs += [(octets, u32(0xFFFFFFFF)), (giga, u32(rng.choice([0xFFFFFFFF, 2**31 - 1, 2**31])))]
        elif mutation == 3:  # an unknown Acct-Status-Type value
            attrs = [a for a in attrs if a[0] != STATUS] + [(STATUS, u32(rng.choice([0, 4, 5, 6, 9, 15, 2**32 - 1])))]
        elif mutation == 4:  # random bytes in a string
            kind = rng.choice([USER_NAME, SESSION_ID, NAS_ID])
            attrs = [a for a in attrs if a[0] != kind] + [(kind, _garbage_string(rng))]
        elif mutation == 5:  # a number that is not one
            kind = rng.choice([STATUS, IN_OCTETS, OUT_OCTETS, IN_GIGA, OUT_GIGA, SESSION_TIME, DELAY, EVENT_TIME])
            attrs = [a for a in attrs if a[0] != kind] + [(kind, _huge_or_odd_number(rng))]
        elif mutation == 6:  # a huge delay or timestamp
            attrs.append((rng.choice([DELAY, EVENT_TIME]), u32(rng.choice([0xFFFFFFFF, 2**31, 1]))))
        elif mutation == 7:  # an unknown attribute, or a vendor one with junk
            attrs.append((rng.choice([150, 190, 224, 241, 255, 26]), rng.randbytes(rng.randint(0, 60))))
        elif mutation == 8:  # NAS-Identifier or NAS-IPv6-Address instead of NAS-IP-Address
            attrs = [a for a in attrs if a[0] != NAS_IP]
            attrs.append((NAS_ID, b"fz-" + rng.randbytes(rng.randint(0, 20))) if rng.random() < 0.5
                         else (NAS_IPV6, rng.randbytes(rng.choice([16, 3, 18]))))
        elif mutation == 9:  # a bad Framed-IP-Address
            attrs.append((FRAMED_IP, rng.randbytes(rng.choice([4, 2, 6]))))
        elif mutation == 10:  # many attributes (FreeRADIUS's max_attributes = 200 drops more: see garbage)
            attrs += [(SESSION_TIME, u32(rng.randrange(2**32)))] * rng.randint(10, 100)
        else:  # shuffled
            rng.shuffle(attrs)
    body = b""
    for kind, value in attrs[:MAX_ATTRIBUTES]:  # whole attributes only, within RADIUS's 4096 bytes
        encoded = attribute(kind, value[:253])
        if len(body) + len(encoded) > 4000:
            break
        body += encoded
    return body


def garbage_datagram(rng: random.Random, identifier: int) -> bytes:
    """Not a valid Accounting-Request: FreeRADIUS must drop it."""
    body = attribute(STATUS, u32(3)) + attribute(USER_NAME, b"garbage")
    good = accounting_request(identifier, body)
    kind = rng.randrange(7)
    if kind == 6:  # more attributes than FreeRADIUS's max_attributes
        return accounting_request(identifier, body + attribute(SESSION_TIME, u32(1)) * MAX_ATTRIBUTES)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 100))
    if kind == 1:
        return good[:rng.randint(1, len(good) - 1)]  # truncated
    if kind == 2:
        return good[:2] + struct.pack("!H", len(good) + 50) + good[4:]  # length beyond the datagram
    if kind == 3:
        return good[:4] + bytes(16) + good[20:]  # wrong Request Authenticator
    if kind == 4:
        return good[:20] + bytes([USER_NAME, 1]) + good[22:]  # an attribute length below 2
    return bytes([rng.choice([1, 2, 3, 11, 40, 43, 99, 255])]) + good[1:]  # another code


# --------------------------------------------------------------------------- sending

@dataclass
class Stats:
    sent: Counter = field(default_factory=Counter)  # by kind, packets (not datagrams)
    answered: Counter = field(default_factory=Counter)
    lost: Counter = field(default_factory=Counter)
    retransmits: int = 0
    garbage_replies: int = 0
    lost_samples: list = field(default_factory=list)  # (kind, datagram) of the first few lost
    elapsed: float = 0.0


def blast(port: int, lanes: list[Lane], fuzz: list[bytes], garbage: list[bytes], window: int,
          time_limit: float, rng: random.Random, timeout: float = 2.0, max_attempts: int = 8) -> Stats:
    """Send everything with ``window`` requests in flight; bounded by ``time_limit``."""
    stats = Stats()
    sockets = []
    selector = selectors.DefaultSelector()
    for slot in range(window):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ, slot)
        sockets.append(sock)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk.setblocking(False)
    junk.connect(("127.0.0.1", port))
    selector.register(junk, selectors.EVENT_READ, -1)

    waiting_on = [len(lane.after) for lane in lanes]
    dependents: dict[int, list[int]] = {}
    for number, lane in enumerate(lanes):
        for before in lane.after:
            dependents.setdefault(before, []).append(number)
    ready = [n for n, lane in enumerate(lanes) if not lane.after and lane.packets]
    valid_left = sum(len(lane.packets) for lane in lanes)
    fuzz_queue, garbage_queue = deque(fuzz), deque(garbage)
    ids = [0] * window
    # slot -> (kind, lane or None, attributes, datagram, sent at, attempts)
    in_flight: dict[int, tuple] = {}
    free = list(range(window))
    started = time.monotonic()
    deadline = started + time_limit

    def finish_lane_packet(number: int) -> None:
        nonlocal valid_left
        lane = lanes[number]
        lane.index += 1
        valid_left -= 1
        if lane.index < len(lane.packets):
            ready.append(number)
            return
        for follower in dependents.get(number, ()):
            waiting_on[follower] -= 1
            if not waiting_on[follower] and lanes[follower].packets:
                ready.append(follower)

    def transmit(slot: int, kind: str, lane, attributes: bytes, attempts: int) -> None:
        ids[slot] = (ids[slot] + 1) % 256
        datagram = accounting_request(ids[slot], attributes)
        try:
            sockets[slot].send(datagram)
        except OSError:
            pass  # seen as a timeout
        in_flight[slot] = (kind, lane, attributes, datagram, time.monotonic(), attempts)

    def fill() -> None:
        while free and (ready or fuzz_queue):
            take_fuzz = fuzz_queue and (not ready or rng.random() < len(fuzz_queue) / (len(fuzz_queue) + valid_left))
            slot = free.pop()
            if take_fuzz:
                stats.sent[FUZZ] += 1
                transmit(slot, FUZZ, None, fuzz_queue.popleft(), 1)
            else:
                pick = rng.randrange(len(ready))
                ready[pick], ready[-1] = ready[-1], ready[pick]
                number = ready.pop()
                stats.sent[VALID] += 1
                transmit(slot, VALID, number, lanes[number].packets[lanes[number].index], 1)
            if garbage_queue and rng.random() < 0.05:
                stats.sent[GARBAGE] += 1
                try:
                    junk.send(garbage_queue.popleft())
                except OSError:
                    pass

    fill()
    while (in_flight or ready or fuzz_queue) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            slot = key.data
            while True:
                try:
                    reply = key.fileobj.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if slot < 0:
                    stats.garbage_replies += 1
                    continue
                flight = in_flight.get(slot)
                if flight is None or not reply_matches(reply, flight[3]):
                    continue
                del in_flight[slot]
                free.append(slot)
                stats.answered[flight[0]] += 1
                if flight[0] == VALID:
                    finish_lane_packet(flight[1])
        now = time.monotonic()
        for slot, (kind, lane, attributes, _, sent_at, attempts) in list(in_flight.items()):
            if now - sent_at <= timeout:
                continue
            if kind == VALID and attempts < max_attempts:  # the NAS retransmits (a new id)
                stats.retransmits += 1
                transmit(slot, kind, lane, attributes, attempts + 1)
                continue
            del in_flight[slot]
            free.append(slot)
            stats.lost[kind] += 1
            if len(stats.lost_samples) < 20:
                stats.lost_samples.append((kind, attributes))
            if kind == VALID:
                finish_lane_packet(lane)
        fill()
    while garbage_queue and time.monotonic() < deadline:  # whatever garbage is left
        stats.sent[GARBAGE] += 1
        try:
            junk.send(garbage_queue.popleft())
        except OSError:
            pass
    stats.elapsed = time.monotonic() - started
    stats.lost[VALID] += valid_left  # not sent, or not answered, within the time limit
    stats.lost[FUZZ] += len(fuzz_queue) + sum(1 for f in in_flight.values() if f[0] == FUZZ)
    stats.lost[GARBAGE] = stats.sent[GARBAGE] - stats.garbage_replies
    for sock in sockets + [junk]:
        sock.close()
    return stats


# --------------------------------------------------------------------------- the run

def database(spec: str) -> tuple[str, callable]:
    """(URL, cleanup) for --db."""
    if spec == "sqlite":
        directory = tempfile.mkdtemp(prefix="rlm_cap-soak-db-")
        return f"sqlite:///{directory}/soak.sqlite3", lambda: None
    if spec == "mariadb":
        server = os.environ.get("RLM_CAP_TEST_MARIADB_URL",
                                "mysql+pymysql://rlm_cap_test:rlm_cap_test@127.0.0.1:3306")
        name = f"rlm_cap_test_soak_{os.getpid()}"
        admin = create_engine(server + "/")
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))

        def drop():
            with admin.begin() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            admin.dispose()
        return f"{server}/{name}", drop
    return spec, lambda: None


def prepare(url: str, users: list[str]) -> None:
    engine = store.make_engine(url)
    store.metadata.drop_all(engine)
    store.create_schema(engine)
    c.add_services(engine, users + FUZZ_SERVICES, lambda user: "down" if user.endswith("7") else "up+down")
    engine.dispose()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", help="sqlite, mariadb, or a URL of a database it may wipe")
    parser.add_argument("--count", type=int, default=100_000, help="Accounting-Requests in all (max 1,000,000)")
    parser.add_argument("--fuzz", type=float, default=0.35, help="share of fuzzed requests")
    parser.add_argument("--garbage", type=float, default=0.02, help="share of datagrams that are not RADIUS")
    parser.add_argument("--window", type=int, default=64, help="requests in flight")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for sending and for draining each")
    parser.add_argument("--stall-after", type=float, default=120,
                        help="give up draining when the database has not moved for this many seconds")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--verbose", action="store_true",
                        help="print the attributes of lost requests and the first log lines of each kind")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1_000_000:
        parser.error("--count must be 1..1,000,000")
    if not 1 <= args.window <= 1024:
        parser.error("--window must be 1..1024")

    rng = random.Random(args.seed)
    garbage_count = int(args.count * args.garbage)
    fuzz_count = int(args.count * args.fuzz)
    stream, lanes = valid_traffic(rng, max(1, args.count - fuzz_count - garbage_count),
                                  users_per_nas=50 if args.count >= 5000 else 5)
    fuzz_count = max(0, args.count - len(stream) - garbage_count)  # the valid NAS ends where it ends
    fuzz = [fuzz_packet(rng, n) for n in range(fuzz_count)]
    garbage = [garbage_datagram(rng, n % 256) for n in range(garbage_count)]
    users = valid_users(stream)
    expected = c.oracle(stream)

    url, cleanup = database(args.db)
    crashes, alive, status_ok, valid_ok, conserved, fuzz_ok = 1, False, False, False, False, False
    wrong: list[str] = []
    drained = float("nan")
    stats, quarantined, stalled = Stats(), 0, False
    log_counts: Counter = Counter()
    log_samples: list[str] = []
    try:
        prepare(url, users)
        with tempfile.TemporaryDirectory(prefix="rlm_cap-soak-") as tmp:
            server = FreeRadius(url, Path(tmp) / "raddb", mode="journal", node="soak",
                                settings={"apply_interval": "0.02", "state_refresh": "2"}).start()
            try:
                stats = blast(server.acct_port, lanes, fuzz, garbage, args.window, args.time_limit, rng)
                alive = server.process.poll() is None
                crashes = 0 if alive else 1
                status_ok = alive and status_server(server.acct_port)
                probe = c.UdpNas(server.acct_port, timeout=2)
                valid_ok = alive and probe.send(c.Packet(c.INTERIM, "10.255.255.1", "probe", "soak-probe", 1, 1, 1))
                probe.close()
                engine = store.make_engine(url)
                drain_started = time.monotonic()
                deadline = drain_started + args.time_limit
                progress_at, before = drain_started, None
                while True:
                    wrong = c.problems(engine, expected, users)
                    now = time.monotonic()
                    if wrong != before:
                        progress_at, before = now, wrong
                    stalled = now - progress_at > args.stall_after
                    if not wrong or now > deadline or stalled or server.process.poll() is not None:
                        break
                    time.sleep(1)
                conserved = not wrong
                drained = time.monotonic() - drain_started
                fuzz_wrong = [p for p in c.problems(engine, c.Expected({}, []), FUZZ_SERVICES)
                              if "stored upload/download" not in p and "sessions differ" not in p]
                fuzz_ok = not fuzz_wrong
                wrong += fuzz_wrong
                engine.dispose()
                crashes = 0 if server.process.poll() is None else 1
                for line in server.output:
                    for needle in ("malformed Accounting-Request", "damaged record skipped", "cannot be applied",
                                   "journal applier error", "a journal batch failed", "Traceback",
                                   "database unavailable", "Segmentation", "rlm_cap: stopping"):
                        if needle in line:
                            log_counts[needle] += 1
                            if log_counts[needle] <= 3:
                                log_samples.append(line)
                quarantined = len(list((Path(tmp) / "raddb" / "radacct").glob("rlm_cap-quarantine-*")))
            finally:
                server.kill()
    finally:
        cleanup()

    ok = (crashes == 0 and status_ok and valid_ok and stats.lost[VALID] == 0 and stats.lost[FUZZ] == 0
          and conserved and fuzz_ok)
    for problem in wrong[:20]:
        print("  " + problem)
    if args.verbose:
        for kind, attributes in stats.lost_samples:
            print(f"  lost {kind}: {describe(attributes)}")
        for line in log_samples:
            print(f"  log: {line[:400]}")
    if log_counts:
        print("  log: " + ", ".join(f"{name}: {n}" for name, n in sorted(log_counts.items())))
    total_sent = sum(stats.sent.values())
    print(f"soak db={args.db.split('://')[0]} seed={args.seed} sent={total_sent} "
          f"(valid={stats.sent[VALID]} fuzz={stats.sent[FUZZ]} garbage={stats.sent[GARBAGE]}) "
          f"answered: valid={stats.answered[VALID]} fuzz={stats.answered[FUZZ]} "
          f"lost: valid={stats.lost[VALID]} fuzz={stats.lost[FUZZ]} garbage={stats.lost[GARBAGE]} (dropped, expected) "
          f"retransmits={stats.retransmits} window={args.window} elapsed={stats.elapsed:.1f}s "
          f"rate={total_sent / stats.elapsed if stats.elapsed else 0:.0f}/s crashes={crashes} "
          f"status_server={'answered' if status_ok else 'NO'} valid_after={'answered' if valid_ok else 'NO'} "
          f"conserved={'yes' if conserved else 'NO'} ({len(users)} services, {len(expected.sessions)} sessions) "
          f"fuzz_services_balanced={'yes' if fuzz_ok else 'NO'} "
          f"drain={'STALLED after ' if stalled else ''}{drained:.1f}s "
          f"quarantine_files={quarantined} result={'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
