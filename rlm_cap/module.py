"""The rlm_cap module as FreeRADIUS runs it, without FreeRADIUS.

``Module`` receives rlm_python3's attribute tuples and answers with abstract
results (``OK``, ``NOT_DURABLE``, ``MALFORMED``, ...); ``rlm_cap.freeradius``
maps them to ``radiusd`` codes. Tests drive this class directly.

Accounting, the hot path (it runs under FreeRADIUS's one lock per module):
- ``journal`` mode: parse, one ``write()`` to the journal, answer. A background
  applier thread applies the journal in batches through ``ledger.apply_record``
  and commits the journal position in the same transaction.
- ``sync`` mode: parse, one database transaction, answer.
Either way the NAS is answered only once the record is durable; otherwise the
result is ``NOT_DURABLE`` (FreeRADIUS ``reject``: no Accounting-Response, the
NAS retransmits).

Authorize reads an in-memory map of capped services that a background thread
refreshes: no query under the lock.
"""

from __future__ import annotations

import gc
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import journal, ledger, store
from .packets import IgnoredPacket, MalformedPacket, first_values, parse_accounting
from .policy import CAPPED, reduce_rate

OK, NOOP, UPDATED, REJECT = "ok", "noop", "updated", "reject"
NOT_DURABLE = "not-durable"  # no answer: the NAS must retransmit
MALFORMED = "malformed"  # answer, and let the site's guard keep the packet in the quarantine file

ERROR, WARNING, INFO = "error", "warning", "info"


_IDLE, _RETRY = object(), object()  # outcomes of one applier step besides a new position
SWITCH_INTERVAL = 0.00005  # seconds: see _share_the_interpreter
GC_THRESHOLDS = (50_000, 20, 100)


def _pairs(text: str) -> dict[str, str]:
    """``'mikrotik=Mikrotik-Rate-Limit cisco=Cisco-AVPair'`` → dict (NAS type → attribute)."""
    pairs = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"rlm_cap: rate_attributes takes TYPE=ATTRIBUTE pairs, not {item!r}")
        pairs[key] = value
    return pairs


def _flag(text: str) -> bool:
    return str(text).strip().lower() in ("yes", "true", "1", "on")


@dataclass(frozen=True)
class Config:
    """The ``config { }`` block of ``mods-available/rlm_cap`` (strings in, typed out)."""

    db_url: str
    mode: str = "journal"
    journal_dir: str = "/var/lib/rlm_cap/journal"
    node: str = ""
    fsync: bool = False
    batch_size: int = 10000
    apply_interval: float = 0.02
    max_apply_interval: float = 2.0
    rotate_bytes: int = 64 * 2**20
    keep_unknown: bool = False
    trust_event_timestamp: bool = False
    state_refresh: float = 2.0
    rate_attribute: str = "Mikrotik-Rate-Limit"
    rate_attributes: dict = field(default_factory=lambda: {"mikrotik": "Mikrotik-Rate-Limit"})
    total_limit_reply: bool = False
    reject_message: str = "Your data cap is reached. Buy a top-up to reconnect."
    drain_timeout: float = 10.0
    cache_ttl: float = 10.0

    @classmethod
    def from_radiusd(cls, values: dict) -> "Config":
        values = {k: v for k, v in (values or {}).items() if v is not None}
        if not values.get("db_url"):
            raise ValueError("rlm_cap: config { db_url = ... } is required")
        mode = values.get("mode", "journal")
        if mode not in ("journal", "sync"):
            raise ValueError(f"rlm_cap: mode must be journal or sync, not {mode!r}")
        typed = dict(
            db_url=values["db_url"], mode=mode,
            journal_dir=values.get("journal_dir", cls.journal_dir),
            node=values.get("node") or socket.gethostname(),
            fsync=_flag(values.get("fsync", "no")),
            batch_size=int(values.get("batch_size", cls.batch_size)),
            apply_interval=float(values.get("apply_interval", cls.apply_interval)),
            max_apply_interval=float(values.get("max_apply_interval", cls.max_apply_interval)),
            rotate_bytes=int(values.get("rotate_bytes", cls.rotate_bytes)),
            keep_unknown=_flag(values.get("keep_unknown", "no")),
            trust_event_timestamp=_flag(values.get("trust_event_timestamp", "no")),
            state_refresh=float(values.get("state_refresh", cls.state_refresh)),
            rate_attribute=values.get("rate_attribute", cls.rate_attribute),
            rate_attributes=_pairs(values.get("rate_attributes", "mikrotik=Mikrotik-Rate-Limit")),
            total_limit_reply=_flag(values.get("total_limit_reply", "no")),
            reject_message=values.get("reject_message", cls.reject_message),
            drain_timeout=float(values.get("drain_timeout", cls.drain_timeout)),
            cache_ttl=float(values.get("cache_ttl", cls.cache_ttl)))
        if typed["batch_size"] < 1 or typed["apply_interval"] <= 0 or typed["state_refresh"] <= 0:
            raise ValueError("rlm_cap: batch_size, apply_interval and state_refresh must be above zero")
        return cls(**typed)


def _share_the_interpreter() -> None:
    """Keep a NAS's request from waiting long behind the applier thread (journal mode).

    Both run in FreeRADIUS's one Python interpreter. By default a busy thread
    keeps the GIL for 5 ms, and a full collection of the applier's garbage
    stops every thread: a request waited tens of milliseconds (bench/,
    BENCHMARKS.md). Shorter GIL slices and rarer collections of the objects
    that live as long as the module (frozen once started) keep it short.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


# MariaDB/MySQL server errors that say the database cannot take the write now
# (down, shutting down, refusing connections, out of disk, locked). PyMySQL also
# raises errors about one statement as OperationalError, e.g. 1690 (a value out
# of range): retrying those would stop the journal for good.
_OUTAGE_CODES = {1021, 1040, 1042, 1043, 1045, 1053, 1114, 1129, 1130, 1152, 1153, 1154, 1155, 1156, 1157,
                 1158, 1159, 1160, 1161, 1184, 1205, 1213, 1927, 4031}


def _transient(error: Exception) -> bool:
    """A database that is down, restarting, unreachable or full: retry later."""
    if isinstance(error, InterfaceError) or (isinstance(error, DBAPIError) and error.connection_invalidated):
        return True
    if not isinstance(error, OperationalError):
        return False
    code = (getattr(error.orig, "args", None) or (None,))[0]
    if not isinstance(code, int):
        return True  # SQLite: locked, read-only, full, cannot open: the file's state, not the record's
    return 2000 <= code < 3000 or code in _OUTAGE_CODES  # 2xxx: the client lost or never had a connection


class Module:
    def __init__(self, config: Config, log):
        self.config = config
        self.log = log  # log(level, message)
        self.engine = None
        self.writer: journal.Writer | None = None
        self.capped: dict[str, tuple[str, tuple]] = {}
        self.remaining: dict[str, int] = {}  # User-Name -> bytes left (total_limit_reply)
        self.nas_types: dict[str, str] = {}  # nasname -> type, from the nas table
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._db_down_since: float | None = None
        self._down_for_writes = False  # the outage was seen by a write: only a write ends it
        self.applied: tuple[int, int] | None = None  # (generation, position) committed
        # Used by one thread only: the applier (journal) or FreeRADIUS under its module lock (sync).
        self.cache = ledger.ContextCache(config.cache_ttl)
        self._refresh_lock = threading.Lock()
        self._outage_lock = threading.Lock()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.engine = store.make_engine(self.config.db_url)
        safe_url = self.engine.url.render_as_string(hide_password=True)
        if self.config.mode == "journal":
            _share_the_interpreter()
            self._open_journal()
            self._spawn(self._apply_loop, "rlm_cap-applier")
        self._spawn(self._refresh_loop, "rlm_cap-state")
        self.log(INFO, f"rlm_cap: started in {self.config.mode} mode, node {self.config.node!r}, "
                       f"database {safe_url}")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Drain the journal (up to drain_timeout) and stop the threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.config.drain_timeout + 5)
        if self.writer is not None:
            self.writer.close()
        if self.engine is not None:
            self.engine.dispose()
        self.log(INFO, "rlm_cap: stopped")

    # ------------------------------------------------------------------ hot path

    def accounting(self, attributes, received_at: float) -> str:
        try:
            record = parse_accounting(attributes, received_at, self.config.trust_event_timestamp)
        except IgnoredPacket:
            return OK
        except MalformedPacket as error:
            self.log(ERROR, f"rlm_cap: malformed Accounting-Request ({error}): answered and quarantined")
            return MALFORMED
        if self.writer is not None:
            try:
                self.writer.append(record)
            except OSError as error:
                self.log(ERROR, f"rlm_cap: journal write failed ({error}): not answering, the NAS retransmits")
                return NOT_DURABLE
            return OK
        try:
            store.run_in_transaction(self.engine, lambda conn: ledger.apply_record(
                conn, record, self.config.keep_unknown, self.cache), before_retry=self.cache.clear)
        except DBAPIError as error:
            if self._failed(error):
                return NOT_DURABLE
            # Not an outage: retransmitting would fail forever. Answer, and let
            # the site's guard keep the packet in the quarantine file.
            self.log(ERROR, f"rlm_cap: record of {record.username!r} session {record.session_id!r} "
                            f"cannot be stored ({str(error.orig).splitlines()[0]}): quarantined")
            return MALFORMED
        self._database_up()
        return OK

    def authorize(self, attributes) -> tuple[str, tuple]:
        values = first_values(attributes)
        username = values.get("User-Name")
        entry = self.capped.get(username) if username is not None else None
        if entry is not None:
            result, rate = entry
            if result == UPDATED:
                # The NAS's type (nas table) decides which attribute carries the rate.
                nas_type = self.nas_types.get(values.get("NAS-IP-Address") or values.get("NAS-Identifier"))
                return UPDATED, ((self.config.rate_attributes.get(nas_type, self.config.rate_attribute), rate),)
            return result, rate
        left = self.remaining.get(username) if username is not None else None
        if left:
            # The NAS itself stops the session at the CAP, between two interims.
            return UPDATED, (("Mikrotik-Total-Limit", str(left % 2**32)),
                             ("Mikrotik-Total-Limit-Gigawords", str(left >> 32)))
        return NOOP, ()

    # ------------------------------------------------------------------ state for authorize

    def _reply_for(self, row: dict) -> tuple[str, object]:
        """(REJECT, reply attributes) for block, (UPDATED, rate) for fixed/reduce, else NOOP."""
        if row["action"] == "block":
            return REJECT, (("Reply-Message", self.config.reject_message),)
        rate = row["fixed_rate"] if row["action"] == "fixed" else (
            reduce_rate(row["normal_rate"], row["reduce_percent"]) if row["normal_rate"] else None)
        return (UPDATED, rate) if rate else (NOOP, ())

    def refresh_state(self) -> None:
        # The state thread and the applier both refresh: reading and publishing
        # under one lock keeps an older snapshot from replacing a newer one.
        with self._refresh_lock:
            with self.engine.connect() as conn:
                rows = store.capped_services(conn)
                remaining = (store.remaining_data(conn, datetime.now(timezone.utc))
                             if self.config.total_limit_reply else {})
                nas_types = {row["nasname"]: row["type"] for row in store.list_nas(conn)}
            self.capped = {row["username"]: self._reply_for(row) for row in rows}
            self.remaining = remaining
            self.nas_types = nas_types

    def _refresh_loop(self) -> None:
        while True:
            try:
                self.refresh_state()
                self._database_up(wrote=False)
            except DBAPIError as error:
                self._database_down(error, wrote=False)
            except Exception as error:  # noqa: BLE001 - a bad row must not stop the refresher
                self.log(ERROR, f"rlm_cap: state refresh failed: {error!r}")
            if self._stop.wait(self.config.state_refresh):
                return

    # ------------------------------------------------------------------ journal applier

    def _open_journal(self) -> None:
        """Open the newest journal file for appends; needs no database."""
        directory = Path(self.config.journal_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.writer = journal.Writer(directory, max(journal.generations(directory) or [1]), self.config.fsync)

    def _recover(self) -> tuple[int, int] | None:
        """Where to resume applying, from the database; None while it is unreachable.

        The position saved with the last batch names a generation. If that file
        is gone or shorter than the position, the journal was replaced: every
        file present is unapplied and is applied from its start.
        """
        directory = Path(self.config.journal_dir)
        reachable, saved = self._saved_position()
        if not reachable:
            return None
        present = journal.generations(directory)
        if saved is not None:
            generation, position = saved
            if generation is not None and generation in present and \
                    journal.file_size(directory, generation) >= position:
                for old in present:
                    if old < generation:
                        journal.path_of(directory, old).unlink()
                return generation, position
            self.log(ERROR, f"rlm_cap: journal.{generation} is missing or shorter than its applied position "
                            f"{position}; applying every journal file present from its start")
        return (present[0] if present else self.writer.generation), 0

    def _apply_loop(self) -> None:
        """Apply the journal until stopped; no error may end this thread silently."""
        directory = Path(self.config.journal_dir)
        resume = None
        while resume is None:
            try:
                resume = self._recover()
            except Exception as error:  # noqa: BLE001 - logged; tried again
                self.log(ERROR, f"rlm_cap: cannot find where the journal was applied up to: {error!r}")
            if resume is None and self._stop.wait(0.5):
                return
        generation, position = self.applied = resume
        deadline = None
        resync = False
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.config.drain_timeout
            if deadline is not None and time.monotonic() > deadline:
                self.log(WARNING, "rlm_cap: stopping with journal records not yet applied; "
                                  "they are applied at the next start")
                return
            if resync:
                # After a failure only the database knows how far the journal is applied
                # (part of a batch, or a commit whose answer was lost): never replay.
                committed = self._committed()
                if committed is None:
                    time.sleep(0.5) if deadline is not None else self._stop.wait(0.5)
                    continue
                generation, position = self.applied = committed
                resync = False
            try:
                step = self._apply_step(directory, generation, position)
            except Exception as error:  # noqa: BLE001 - an I/O error must not stop the applier for good
                self.log(ERROR, f"rlm_cap: journal applier error, retrying: {error!r}")
                step = _RETRY
            if step is _IDLE:
                if deadline is not None:
                    return  # drained
                self._stop.wait(self.config.apply_interval)
            elif step is _RETRY:
                resync = True
                time.sleep(0.5) if deadline is not None else self._stop.wait(0.5)
            else:
                generation, position, records = step
                self.applied = generation, position
                if deadline is None:
                    self._stop.wait(self._pause_after(records))

    def _pause_after(self, records: int) -> float:
        """How long to let the journal fill after applying ``records``.

        A large batch means a burst: waiting longer (apply_interval per 100
        records, up to max_apply_interval) lets the next batch hold several
        records of each session, which cost one database row together. A full
        batch means a backlog, and the usual small batches mean the applier
        keeps up: no extra wait, so CAP decisions stay prompt.
        """
        if records < 100 or records >= self.config.batch_size:
            return 0.0
        longest = max(self.config.max_apply_interval, self.config.apply_interval)
        return min(longest, self.config.apply_interval * records / 100)

    def _saved_position(self) -> tuple[bool, tuple[int | None, int] | None]:
        """(reachable, (generation, position) the database holds for this node, or None)."""
        try:
            with self.engine.begin() as conn:
                saved = store.journal_position(conn, self.config.node)
        except DBAPIError as error:
            self._database_down(error, wrote=False)
            return False, None
        return True, (None if saved is None else (journal.generation_of(saved[0]), saved[1]))

    def _committed(self) -> tuple[int, int] | None:
        """The position the database holds for this node; None while it is unreachable."""
        reachable, saved = self._saved_position()
        if not reachable:
            return None
        return saved if saved is not None and saved[0] is not None else self.applied

    def _apply_step(self, directory: Path, generation: int, position: int):
        """Apply the next batch, or move on to the next journal file.

        Returns the new (generation, position, records applied), ``_IDLE``
        when caught up, or ``_RETRY`` when the database is unreachable.
        """
        batch = journal.read_batch(directory, generation, position, self.config.batch_size)
        if batch.records or batch.damaged:
            return (generation, batch.end, len(batch.records)) if self._apply(batch, position) else _RETRY
        if generation < self.writer.generation or (
                journal.file_size(directory, generation) >= self.config.rotate_bytes
                and self.writer.rotate(generation, position)):
            if not self._commit_position(generation + 1, 0):
                return _RETRY
            journal.path_of(directory, generation).unlink(missing_ok=True)
            return generation + 1, 0, 0
        return _IDLE

    def _commit_position(self, generation: int, position: int) -> bool:
        path = str(journal.path_of(Path(self.config.journal_dir), generation))
        try:
            store.run_in_transaction(self.engine, lambda conn: store.set_journal_position(
                conn, self.config.node, path, position, datetime.now(timezone.utc)))
        except DBAPIError as error:
            self._database_down(error)
            return False
        return True

    def _apply(self, batch: journal.Batch, start: int) -> bool:
        """Apply a batch and its end position in one transaction; False to retry later."""
        path = str(journal.path_of(Path(self.config.journal_dir), batch.generation))
        for offset, reason in batch.damaged:
            self.log(ERROR, f"rlm_cap: {path} offset {offset}: damaged record skipped ({reason})")
        keep = self.config.keep_unknown

        def work(conn, records, end):
            applied = ledger.apply_records(conn, [record for _, record in records], keep, self.cache)
            store.set_journal_position(conn, self.config.node, path, end, datetime.now(timezone.utc))
            return applied

        try:
            applied = store.run_in_transaction(self.engine, lambda conn: work(conn, batch.records, batch.end),
                                               before_retry=self.cache.clear)
        except Exception as error:  # noqa: BLE001 - sorted below: outage, or one bad record
            if self._failed(error):
                return False
            return self._apply_one_by_one(batch, work, error)
        self._database_up()
        if self.config.total_limit_reply or self._state_changed(batch, applied):
            self._refresh_after_batch()
        return True

    def _state_changed(self, batch: journal.Batch, applied: list[ledger.Applied]) -> bool:
        """Whether a service of the batch was capped or restored: authorize must know at once."""
        return any(result.state is not None and (result.state == CAPPED) != (record.username in self.capped)
                   for (_, record), result in zip(batch.records, applied))

    def _apply_one_by_one(self, batch: journal.Batch, work, error: Exception) -> bool:
        """A record the ledger cannot apply must not block the journal: find it, log it, skip it."""
        self.log(ERROR, f"rlm_cap: a journal batch failed ({error!r}); applying its records one by one")
        ends = [offset for offset, _ in batch.records[1:]] + [batch.end]
        for (offset, record), end in zip(batch.records, ends):
            try:
                store.run_in_transaction(self.engine, lambda conn: work(conn, [(offset, record)], end),
                                         before_retry=self.cache.clear)
            except Exception as one_error:  # noqa: BLE001
                if self._failed(one_error):
                    return False
                self.log(ERROR, f"rlm_cap: journal record at offset {offset} skipped, it cannot be applied: "
                                f"{one_error!r} (user {record.username!r}, session {record.session_id!r})")
                store.run_in_transaction(self.engine, lambda conn: work(conn, [], end))
        return True

    def _refresh_after_batch(self) -> None:
        try:
            self.refresh_state()
        except DBAPIError as error:
            self._database_down(error, wrote=False)

    # ------------------------------------------------------------------ failures and outages

    def _failed(self, error: Exception) -> bool:
        """After a rolled-back transaction: True when the database is unreachable (try later)."""
        self.cache.clear()  # cached period ids may name rows that were rolled back
        if _transient(error):
            self._database_down(error)
            return True
        return False

    def _database_down(self, error: Exception, wrote: bool = True) -> None:
        """``wrote`` False: a read failed (the state refresh)."""
        with self._outage_lock:  # three threads report; one line per outage
            if self._db_down_since is not None:
                return
            self._db_down_since = time.monotonic()
            self._down_for_writes = wrote
        reason = str(getattr(error, "orig", error)).splitlines()[0]
        self.log(ERROR, f"rlm_cap: database unavailable ({reason}); "
                        + ("records wait in the journal" if self.writer else "the NAS will retransmit"))

    def _database_up(self, wrote: bool = True) -> None:
        """``wrote`` False: only a read worked, which says nothing of a full or read-only database."""
        with self._outage_lock:
            if self._down_for_writes and not wrote:
                return
            since, self._db_down_since = self._db_down_since, None
        if since is not None:
            self.log(INFO, f"rlm_cap: database back after {time.monotonic() - since:.1f} s")
