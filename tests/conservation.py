"""Conservation: what rlm_cap stored equals what an oracle computes from the packets alone.

A recorded stream of Accounting-Requests (``Packet``), built by a seeded
generator and bent by faults a network and a NAS really produce
(retransmits, reordering, Interims after a Stop, sessions without a Start,
a NAS reboot that reuses Acct-Session-Id values), is sent through real
FreeRADIUS by ``UdpNas``/``play``. At the end ``assert_conserved`` compares
the database with ``oracle(stream)``:

- per service and direction: upload and download == the oracle's;
- per session: the stored last totals == the oracle's;
- per service: counted == what the plan's direction counts, and every
  counted byte is in exactly one place: the buckets' ``used`` plus the
  periods' over-use plus free (bonus-unlimited) bytes == counted, with
  0 <= used <= size for every bucket;
- users without a service: nothing stored.

The oracle is deliberately independent of rlm_cap: it reads only the wire
attributes, and it never calls ``rlm_cap.counters``. Its rules are the
NAS's truth, not the module's algorithm: a session is keyed by NAS + Acct-Session-Id
+ User-Name; an Accounting-On/Off of a NAS ends all of its sessions (its ids are
then reused); a Start for a key whose session was stopped begins a new one (a
Start for an open one is a duplicate); a session's usage is its *last* totals,
``Gigawords * 2**32 + Octets``, last meaning the greatest Acct-Session-Time
(so a duplicate or a packet that arrives late changes nothing).

The faults never do what no NAS does: a copy or a delayed packet never
overtakes a Start of its own key or an Accounting-On of its NAS, and a Start
is never delayed past a packet of its own key. (Either would make the NAS's
own packets contradict each other: a session's bytes would belong to two
sessions, and no rule, the oracle's or rlm_cap's, could tell.)
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Iterable

from pyrad import packet as radius_packet
from sqlalchemy import select

from cli.lab import DICTIONARY, SECRET
from rlm_cap import store
from rlm_cap.periods import parse_time_frame


GIGAWORD = 2**32
GB = 10**9
START, INTERIM, STOP, ON, OFF = "Start", "Interim-Update", "Stop", "Accounting-On", "Accounting-Off"
NAS_EVENTS = (ON, OFF)


# --------------------------------------------------------------------------- the stream

@dataclass(frozen=True)
class Packet:
    """One Accounting-Request as a NAS sends it. ``up`` = Acct-Input (the
    subscriber's upload), ``down`` = Acct-Output, both running totals."""

    status: str
    nas: str
    session: str = ""
    user: str = ""
    up: int | None = None
    down: int | None = None
    session_time: int | None = None
    delay: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.nas, self.session, self.user

    def attributes(self) -> list[tuple[str, object]]:
        """The wire attributes, in packet order (what the oracle reads)."""
        pairs: list[tuple[str, object]] = [("Acct-Status-Type", self.status), ("NAS-IP-Address", self.nas)]
        if self.user:
            pairs.append(("User-Name", self.user))
        if self.session:
            pairs.append(("Acct-Session-Id", self.session))
        for name, total in (("Input", self.up), ("Output", self.down)):
            if total is not None:
                pairs.append((f"Acct-{name}-Octets", total % GIGAWORD))
                pairs.append((f"Acct-{name}-Gigawords", total // GIGAWORD))
        if self.session_time is not None:
            pairs.append(("Acct-Session-Time", self.session_time))
        if self.delay:
            pairs.append(("Acct-Delay-Time", self.delay))
        return pairs


def traffic(rng: random.Random, nas: str, users: list[str], sessions_per_user: int = 2,
            interims: tuple[int, int] = (2, 6), heavy: Iterable[str] = (), open_at_end: float = 0.0,
            counterless_stop: float = 0.0, reuse: float = 0.0) -> list[Packet]:
    """The sessions of one NAS boot, interleaved as they would arrive.

    Acct-Session-Id values are "1", "2", ... in user order, so the next boot of
    the NAS (called with the same users) reuses them for the same users.
    ``heavy`` users move ~1.2 GB per interim: past 2^32 (Gigawords) and past
    a 10 GB CAP. ``open_at_end``: share of a user's last sessions with no Stop;
    ``counterless_stop``: share of Stops without counters, followed by an
    Interim with newer counters (SPEC: that Interim still counts); ``reuse``:
    share of sessions that reuse the id of the user's previous, stopped session.
    """
    heavy = set(heavy)
    chains: list[list[Packet]] = []
    next_id = 1
    for user in users:
        chain: list[Packet] = []
        previous_id = None  # the id of the user's last session, if it was stopped
        for n in range(sessions_per_user):
            if previous_id is not None and rng.random() < reuse:
                session_id = previous_id  # a new Start on the key of a stopped session
            else:
                if chain:
                    chains.append(chain)  # a new key: its own chain, interleaved freely
                chain = []
                session_id, next_id = str(next_id), next_id + 1
            packets, stopped = _session(rng, nas, user, session_id, interims, user in heavy,
                                        open_=n == sessions_per_user - 1 and rng.random() < open_at_end,
                                        counterless=rng.random() < counterless_stop)
            chain += packets
            previous_id = session_id if stopped else None
        chains.append(chain)
    return merge(rng, [c for c in chains if c])


def _session(rng, nas, user, session_id, interims, heavy, open_, counterless) -> tuple[list[Packet], bool]:
    up = down = 0
    seconds = 0
    packets = [Packet(START, nas, session_id, user, session_time=0)]
    for _ in range(rng.randint(*interims)):
        seconds += rng.randint(30, 300)
        up += rng.randint(0, 30_000_000) if not heavy else rng.randint(10**7, 10**8)
        down += rng.randint(0, 300_000_000) if not heavy else rng.randint(8 * 10**8, 16 * 10**8)
        packets.append(Packet(INTERIM, nas, session_id, user, up, down, seconds))
    if open_:
        return packets, False
    seconds += rng.randint(1, 60)
    if counterless:
        # Some NAS send a Stop without counters; a reordered Interim with newer totals follows it.
        packets.append(Packet(STOP, nas, session_id, user, session_time=seconds))
        packets.append(Packet(INTERIM, nas, session_id, user, up + rng.randint(1, 10**6),
                              down + rng.randint(1, 10**7), seconds + 1))
    else:
        packets.append(Packet(STOP, nas, session_id, user, up + rng.randint(0, 10**6),
                              down + rng.randint(0, 10**7), seconds))
    return packets, True


def merge(rng: random.Random, chains: list[list[Packet]]) -> list[Packet]:
    """Interleave chains at random, each chain's own order kept."""
    queues = [list(c) for c in chains if c]
    merged: list[Packet] = []
    while queues:
        weights = [len(q) for q in queues]
        chosen = rng.choices(range(len(queues)), weights)[0]
        merged.append(queues[chosen].pop(0))
        if not queues[chosen]:
            queues.pop(chosen)
    return merged


def reboot(nas: str) -> Packet:
    return Packet(ON, nas)


def can_pass(moving: Packet, other: Packet) -> bool:
    """Whether a delayed or copied packet may arrive after ``other`` (see the module doc)."""
    if moving.status in NAS_EVENTS:
        return False
    if other.status in NAS_EVENTS:
        return other.nas != moving.nas
    if other.key == moving.key:
        # A Start never overtakes, and is never overtaken by, a packet of its own key.
        return moving.status != START and other.status != START
    return True


def _shift(out: list[Packet], index: int, packet: Packet, steps: int) -> int:
    """How far after ``index`` the packet may go, at most ``steps``."""
    j = index
    while steps and j + 1 < len(out) and can_pass(packet, out[j + 1]):
        j += 1
        steps -= 1
    return j


def retransmit(rng: random.Random, packets: list[Packet], fraction: float = 0.1,
               window: int = 3) -> list[Packet]:
    """A copy of ``fraction`` of the packets (Acct-Delay-Time raised, as RFC 2866
    wants), arriving up to ``window`` packets later."""
    out = list(packets)
    chosen = [i for i, p in enumerate(out) if p.status not in NAS_EVENTS and rng.random() < fraction]
    for i in reversed(chosen):
        copy = replace(out[i], delay=out[i].delay + rng.randint(1, 5))
        out.insert(_shift(out, i, copy, rng.randint(0, window)) + 1, copy)
    return out


def reorder(rng: random.Random, packets: list[Packet], fraction: float = 0.1, window: int = 3) -> list[Packet]:
    """Delay ``fraction`` of the packets behind the next 1..``window`` packets of their own
    session (whatever else arrives in between), as far as they may pass."""
    out = list(packets)
    for i in reversed(range(len(out))):
        if out[i].status in NAS_EVENTS or rng.random() >= fraction:
            continue
        moving, overtake = out[i], rng.randint(1, window)
        j = target = i
        while j + 1 < len(out) and j - i < 200 and can_pass(moving, out[j + 1]):
            j += 1
            if out[j].key == moving.key:
                target, overtake = j, overtake - 1
                if not overtake:
                    break
        if target > i:
            out.insert(target, out.pop(i))
    return out


def interims_after_stop(rng: random.Random, packets: list[Packet], fraction: float = 0.5) -> list[Packet]:
    """For ``fraction`` of the stopped sessions, their last Interim arrives after the Stop."""
    out = list(packets)
    for stop_index in reversed([i for i, p in enumerate(out) if p.status == STOP]):
        if rng.random() >= fraction:
            continue
        stop = out[stop_index]
        before = [i for i in range(stop_index) if out[i].key == stop.key and out[i].status == INTERIM]
        if not before or any(out[i].key == stop.key and out[i].status == START
                             for i in range(before[-1], stop_index)):
            continue
        i = before[-1]
        if all(can_pass(out[i], out[k]) for k in range(i + 1, stop_index + 1)):
            out.insert(stop_index, out.pop(i))  # now right after the Stop
    return out


def without_starts(rng: random.Random, packets: list[Packet], fraction: float = 0.3) -> list[Packet]:
    """Drop the Start of ``fraction`` of the sessions (the first session of each key only)."""
    seen: set = set()
    out = []
    for p in packets:
        first = p.key not in seen
        seen.add(p.key)
        if p.status == START and first and rng.random() < fraction:
            continue
        out.append(p)
    return out


def all_faults(rng: random.Random, nases: list[str], users: list[str], heavy: Iterable[str] = ()) -> list[Packet]:
    """Every fault at once: per NAS a boot with sessions left open, a reboot (its
    Accounting-On retransmitted), a second boot reusing the Acct-Session-Id values;
    10 % retransmits, 10 % reordered, Interims after Stops, sessions without Start."""
    per_nas = []
    for nas in nases:
        first, second = faulty_boot(rng, nas, users, heavy), faulty_boot(rng, nas, users, heavy)
        per_nas.append(first + [reboot(nas), reboot(nas)] + second)
    return merge(rng, per_nas)


def faulty_boot(rng: random.Random, nas: str, users: list[str], heavy: Iterable[str] = ()) -> list[Packet]:
    """One boot of a NAS with every per-session fault (see ``all_faults``)."""
    stream = traffic(rng, nas, users, sessions_per_user=2, heavy=heavy, open_at_end=0.5,
                     counterless_stop=0.2, reuse=0.3)
    stream = without_starts(rng, interims_after_stop(rng, stream, 0.3), 0.2)
    return reorder(rng, retransmit(rng, stream, 0.1), 0.1)


def faults_seen(stream: list[Packet]) -> dict[str, int]:
    """How many of each fault the stream carries (so a test can prove they are there).

    A duplicate is a packet equal to an earlier one of the same session (Acct-Delay-Time
    aside); late, one whose Acct-Session-Time is below one seen before in its session."""
    seen: set[Packet] = set()
    best: dict[tuple, int] = {}
    stopped: set = set()
    duplicates = late = after_stop = 0
    for p in stream:
        if p.status in NAS_EVENTS:  # the NAS's sessions end: reused ids are new sessions
            seen = {q for q in seen if q.nas != p.nas}
            best = {k: v for k, v in best.items() if k[0] != p.nas}
            stopped = {k for k in stopped if k[0] != p.nas}
            continue
        if p.status == START and p.key in stopped:  # a new session on a stopped key
            seen = {q for q in seen if q.key != p.key}
            best.pop(p.key, None)
            stopped.discard(p.key)
        bare = replace(p, delay=0)
        duplicates += bare in seen
        seen.add(bare)
        if p.session_time is not None and p.up is not None:
            late += p.session_time < best.get(p.key, -1)
            best[p.key] = max(best.get(p.key, -1), p.session_time)
        after_stop += p.status == INTERIM and p.key in stopped
        if p.status == STOP:
            stopped.add(p.key)
    keys_started = {p.key for p in stream if p.status == START}
    return {"packets": len(stream), "duplicates": duplicates, "late": late, "interims_after_stop": after_stop,
            "keys_without_start": len({p.key for p in stream if p.user} - keys_started),
            "reboots": sum(p.status in NAS_EVENTS for p in stream)}


# --------------------------------------------------------------------------- the oracle

@dataclass
class _Session:
    key: tuple
    stopped: bool = False
    time: int = -1
    up: int = 0
    down: int = 0


@dataclass
class Expected:
    users: dict[str, tuple[int, int]]  # user -> (upload, download)
    sessions: list[tuple[str, str, str, int, int]]  # (nas, session id, user, upload, download)


def _total(values: dict, direction: str) -> int | None:
    octets = values.get(f"Acct-{direction}-Octets")
    if octets is None:
        return None
    return int(values.get(f"Acct-{direction}-Gigawords") or 0) * GIGAWORD + int(octets)


def oracle(stream: Iterable[Packet]) -> Expected:
    """Per user and per session usage, from the wire attributes alone (module doc)."""
    boots: dict[str, int] = defaultdict(int)
    current: dict[tuple, _Session] = {}
    sessions: list[_Session] = []
    for p in stream:
        values: dict = {}
        for name, value in p.attributes():
            values.setdefault(name, value)  # the first of a repeated attribute counts
        status, nas = values["Acct-Status-Type"], values["NAS-IP-Address"]
        if status in NAS_EVENTS:
            boots[nas] += 1
            continue
        key = (nas, boots[nas], values["Acct-Session-Id"], values["User-Name"])
        session = current.get(key)
        if session is None or (status == START and session.stopped):
            session = current[key] = _Session(key)
            sessions.append(session)
        if status == STOP:
            session.stopped = True
        up, down = _total(values, "Input"), _total(values, "Output")
        if up is None and down is None:
            continue
        at = int(values.get("Acct-Session-Time", 0))
        if at > session.time or (at == session.time and (up or 0, down or 0) > (session.up, session.down)):
            session.time = at
            session.up = up if up is not None else session.up
            session.down = down if down is not None else session.down
    users: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for s in sessions:
        up, down = users[s.key[3]]
        users[s.key[3]] = (up + s.up, down + s.down)
    return Expected(dict(users), sorted((s.key[0], s.key[2], s.key[3], s.up, s.down) for s in sessions))


# --------------------------------------------------------------------------- services

PLAN_NAMES = {"up+down": "Conservation 10GB", "down": "Conservation 10GB down"}


def add_services(engine, users: Iterable[str], direction: Callable[[str], str] = lambda user: "up+down") -> None:
    """A service per user on a 10 GB plan (bonus 5 GB in 00:00-04:00, rollover,
    reduce at the CAP) counting ``direction(user)``; plans and customer made once."""
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        customer = store.find_customer(conn, "conservation")
        customer_id = customer["id"] if customer else store.add_customer(
            conn, "conservation", now, balance=Decimal("0"))
        plans = {}
        for way, name in PLAN_NAMES.items():
            plan = store.find_plan(conn, name)
            if plan is None:
                plan_id = store.add_plan(conn, name=name, monthly_limit=10 * GB, direction=way, action="reduce",
                                         reduce_percent=50, normal_rate="10M/20M", bonus_limit=5 * GB,
                                         rollover=True)
                store.set_time_frames(conn, plan_id, [parse_time_frame("00:00-04:00")])
            else:
                plan_id = plan["id"]
            plans[way] = plan_id
        for user in users:
            store.add_service(conn, customer_id, plans[direction(user)], user, "conservation", now, "ok")


# --------------------------------------------------------------------------- what was stored

@dataclass
class Stored:
    service: bool = True
    up: int = 0
    down: int = 0
    counted: int = 0
    used: int = 0
    overuse: int = 0
    free: int = 0
    direction: str = "up+down"
    buckets: list = field(default_factory=list)
    sessions: list = field(default_factory=list)
    not_integers: list = field(default_factory=list)  # byte counts the database holds as anything but int


def stored(engine, users: Iterable[str]) -> dict[str, Stored]:
    """What the database holds for each user, read through ``rlm_cap.store``'s tables
    (a few statements, whatever the number of users)."""
    users = list(users)
    result = {user: Stored(service=False) for user in users}
    if not users:
        return result
    with engine.begin() as conn:
        services = {row["id"]: row for row in conn.execute(
            select(store.services.c.id, store.services.c.username, store.plans.c.direction)
            .join(store.plans, store.plans.c.id == store.services.c.plan_id)
            .where(store.services.c.username.in_(users))).mappings()}
        for row in services.values():
            result[row["username"]] = Stored(direction=row["direction"])
        ids = list(services)
        for p in conn.execute(select(store.periods).where(store.periods.c.service_id.in_(ids))).mappings():
            got = result[services[p["service_id"]]["username"]]
            got.not_integers += [f"period {p['id']} {name} = {p[name]!r}" for name in (
                "upload_bytes", "download_bytes", "counted_bytes", "overuse_bytes", "free_bytes")
                if type(p[name]) is not int]
            got.up += p["upload_bytes"]
            got.down += p["download_bytes"]
            got.counted += p["counted_bytes"]
            got.overuse += p["overuse_bytes"]
            got.free += p["free_bytes"]
        for b in conn.execute(select(store.buckets).where(store.buckets.c.service_id.in_(ids))
                              .order_by(store.buckets.c.id)).mappings():
            got = result[services[b["service_id"]]["username"]]
            got.not_integers += [f"bucket {b['id']} {name} = {b[name]!r}" for name in ("size", "used")
                                 if b[name] is not None and type(b[name]) is not int]
            got.used += b["used"]
            got.buckets.append((b["id"], b["kind"], b["size"], b["used"]))
        for s in conn.execute(select(store.sessions).where(store.sessions.c.username.in_(users))
                              .order_by(store.sessions.c.id)).mappings():
            result[s["username"]].sessions.append(
                (s["nas"], s["acct_session_id"], s["username"], s["input_total"], s["output_total"]))
    return result


def counted_by(direction: str, up: int, down: int) -> int:
    return {"up+down": up + down, "up": up, "down": down}[direction]


def problems(engine, expected: Expected, users: Iterable[str] | None = None) -> list[str]:
    """Every way the database differs from the oracle; [] when usage is conserved.

    ``users``: whom to check (default: every user of the stream)."""
    users = sorted(set(users) if users is not None else set(expected.users))
    wrong = []
    for user, got in stored(engine, users).items():
        if not got.service:
            if got.sessions:
                wrong.append(f"{user}: has no service, yet sessions were stored: {got.sessions}")
            continue
        if got.not_integers:  # SQLite turns an overflowing integer sum into a REAL: precision is gone
            wrong.append(f"{user}: byte counts that are not integers: {', '.join(got.not_integers)}")
        up, down = expected.users.get(user, (0, 0))
        if (got.up, got.down) != (up, down):
            wrong.append(f"{user}: stored upload/download {got.up}/{got.down}, oracle {up}/{down} "
                         f"(off by {got.up - up:+}/{got.down - down:+})")
        want_sessions = sorted(s for s in expected.sessions if s[2] == user)
        if sorted(got.sessions) != want_sessions:
            missing = Counter(want_sessions) - Counter(got.sessions)
            extra = Counter(got.sessions) - Counter(want_sessions)
            wrong.append(f"{user}: sessions differ from the oracle: missing {sorted(missing.elements())}, "
                         f"unexpected {sorted(extra.elements())}")
        if got.counted != counted_by(got.direction, got.up, got.down):
            wrong.append(f"{user}: counted {got.counted} != {got.direction} of {got.up}/{got.down}")
        if got.used + got.overuse + got.free != got.counted:
            wrong.append(f"{user}: buckets used {got.used} + over-use {got.overuse} + free {got.free} "
                         f"= {got.used + got.overuse + got.free} != counted {got.counted}")
        for bucket_id, kind, size, used in got.buckets:
            if used < 0 or (size is not None and used > size):
                wrong.append(f"{user}: {kind} bucket {bucket_id} used {used} outside 0..{size}")
    return wrong


def assert_conserved(engine, expected: Expected, users: Iterable[str] | None = None) -> None:
    wrong = problems(engine, expected, users)
    assert not wrong, "usage not conserved:\n  " + "\n  ".join(wrong)


def wait_conserved(engine, expected: Expected, users: Iterable[str] | None = None, timeout: float = 30.0) -> None:
    """Wait (journal mode applies in the background) until the database matches the
    oracle, then assert it; the failure lists every difference."""
    deadline = time.monotonic() + timeout
    while problems(engine, expected, users) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_conserved(engine, expected, users)


# --------------------------------------------------------------------------- sending

class UdpNas:
    """Sends Accounting-Requests from one UDP socket, one at a time, and waits for
    the Accounting-Response (the id and the Response Authenticator must match)."""

    def __init__(self, port: int, timeout: float = 1.0, secret: bytes = SECRET):
        self.port, self.timeout, self.secret = port, timeout, secret
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.next_id = 0

    def close(self) -> None:
        self.sock.close()

    def encode(self, p: Packet, extra_delay: int = 0) -> tuple[radius_packet.AcctPacket, bytes]:
        request = radius_packet.AcctPacket(code=radius_packet.AccountingRequest, secret=self.secret,
                                           dict=DICTIONARY, id=self.next_id)
        self.next_id = (self.next_id + 1) % 256
        for name, value in replace(p, delay=p.delay + extra_delay).attributes():
            request.AddAttribute(name, value)
        return request, request.RequestPacket()

    def send(self, p: Packet, extra_delay: int = 0) -> bool:
        request, data = self.encode(p, extra_delay)
        try:
            self.sock.send(data)
        except ConnectionRefusedError:  # a late ICMP error of an earlier send
            return False
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                reply = self.sock.recv(4096)
            except TimeoutError:
                return False
            except ConnectionRefusedError:  # nobody listens: FreeRADIUS is down
                return False
            if len(reply) >= 20 and reply[0] == radius_packet.AccountingResponse and reply[1] == request.id:
                try:
                    if request.VerifyReply(request.CreateReply(packet=reply), reply):
                        return True
                except radius_packet.PacketError:
                    pass
        return False


@dataclass
class Played:
    sent: int = 0  # packets of the stream
    attempts: int = 0  # datagrams, retransmissions included
    unanswered: int = 0  # attempts that got no answer


def play(nas: UdpNas, stream: list[Packet], before: dict[int, Callable[[], None]] | None = None,
         on_unanswered: Callable[[int], None] | None = None, retry_for: float = 60.0,
         retry_interval: float = 0.1) -> Played:
    """Send the stream in order; a packet not answered is retransmitted (with a higher
    Acct-Delay-Time) until it is, for at most ``retry_for`` seconds, calling
    ``on_unanswered(index)`` after each miss. ``before[i]()`` runs before packet i."""
    played = Played()
    for index, p in enumerate(stream):
        if before and index in before:
            before[index]()
        deadline = time.monotonic() + retry_for
        attempt = 0
        while True:
            played.attempts += 1
            if nas.send(p, extra_delay=attempt):
                break
            played.unanswered += 1
            attempt += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"packet {index} ({p}) not answered within {retry_for} s")
            if on_unanswered is not None:
                on_unanswered(index)
            time.sleep(retry_interval)  # the NAS's retransmission interval
        played.sent += 1
    return played
