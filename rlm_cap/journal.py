"""The local append-only journal of accounting records (``journal`` mode).

The FreeRADIUS module appends each record with one ``write()`` to an O_APPEND
file and answers the NAS: the record survives a crash of FreeRADIUS (it is in
the kernel's page cache), the same guarantee as FreeRADIUS's own ``detail``
file; ``fsync = yes`` adds power-loss durability at the cost of one fdatasync
per record. A background applier reads complete lines from the position the
database last committed, applies them in batches, and commits the new position
in the same transaction, so a restart neither loses nor repeats a record.

Files are ``journal.<generation>`` (generation = 1, 2, ...). When the applier
has caught up with a file larger than ``rotate_bytes`` the writer moves on to
the next generation; the old file is deleted once the database has recorded
that the new generation starts at 0.

A line is a JSON array (see ``encode``). A crash in the middle of a write
leaves a line without its end; on open such a tail is terminated, and the
reader skips any line that does not decode, with a log line.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .counters import AccountingRecord

FORMAT = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NAME = re.compile(r"^journal\.(\d+)$")


def encode(record: AccountingRecord) -> bytes:
    micros = (record.time - _EPOCH) // timedelta(microseconds=1)
    return (json.dumps([FORMAT, record.status, record.nas, record.session_id, record.username, micros,
                        record.input_octets, record.input_gigawords, record.output_octets,
                        record.output_gigawords, record.session_time, record.framed_ip, record.nas_ip],
                       separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def decode(line: bytes) -> AccountingRecord:
    """One journal line → record; ValueError when the line is damaged."""
    try:
        fields = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not a journal record ({error})") from None
    if not isinstance(fields, list) or len(fields) != 13 or fields[0] != FORMAT:
        raise ValueError("not a journal record of format 1")
    (_, status, nas, session_id, username, micros, in_o, in_g, out_o, out_g,
     session_time, framed_ip, nas_ip) = fields
    try:  # a damaged line can still be JSON of the right shape: its time must not crash the reader
        at = _EPOCH + timedelta(microseconds=micros)
    except (TypeError, OverflowError) as error:
        raise ValueError(f"not a journal record (bad time {str(micros)[:40]!r}: {error})") from None
    return AccountingRecord(status, nas, session_id, username, at,
                            in_o, in_g, out_o, out_g, session_time, framed_ip, nas_ip)


def generations(directory: Path) -> list[int]:
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def generation_of(path: str) -> int | None:
    """``/var/lib/rlm_cap/journal/journal.7`` → 7; None for a name that is not a journal's."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def path_of(directory: Path, generation: int) -> Path:
    return directory / f"journal.{generation}"


class Writer:
    """Appends records; thread-safe (the applier rotates it from its own thread)."""

    def __init__(self, directory: Path, generation: int, fsync: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._open(generation)

    def _open(self, generation: int) -> None:
        path = path_of(self.directory, generation)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    os.write(fd, b"\n")  # end a record torn by a crash, so it stays alone
        self.generation, self._fd = generation, fd

    def append(self, record: AccountingRecord) -> None:
        """One write() of one line: raises OSError (disk full, ...) when not durable."""
        data = encode(record)
        with self._lock:
            size = os.fstat(self._fd).st_size
            try:
                written = os.write(self._fd, data)
                if written != len(data):  # a short write on a full disk: not durable
                    raise OSError(f"journal write cut short ({written} of {len(data)} bytes)")
                if self.fsync:
                    os.fdatasync(self._fd)
            except OSError:
                # Take the fragment back out, or the next record would be appended
                # to it and read back as one damaged line: an answered record lost.
                try:
                    os.ftruncate(self._fd, size)
                except OSError:
                    pass
                raise

    def rotate(self, applied_generation: int, applied_position: int) -> int | None:
        """Start the next generation if the current file is fully applied; its number or None."""
        with self._lock:
            if applied_generation != self.generation or os.fstat(self._fd).st_size != applied_position:
                return None
            os.close(self._fd)
            self._open(self.generation + 1)
            return self.generation

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


@dataclass
class Batch:
    generation: int
    end: int  # position after the last line read
    records: list[tuple[int, AccountingRecord]]  # (offset, record)
    damaged: list[tuple[int, str]]  # (offset, reason)


def read_batch(directory: Path, generation: int, position: int, limit: int) -> Batch:
    """Up to ``limit`` complete lines of ``journal.<generation>`` from ``position``."""
    records, damaged = [], []
    end = position
    try:
        handle = open(path_of(directory, generation), "rb")
    except FileNotFoundError:
        return Batch(generation, position, [], [])
    with handle:
        handle.seek(position)
        while len(records) + len(damaged) < limit:
            line = handle.readline()
            if not line.endswith(b"\n"):
                break  # not written completely yet
            try:
                records.append((end, decode(line)))
            except ValueError as error:
                damaged.append((end, str(error)))
            end += len(line)
    return Batch(generation, end, records, damaged)


def file_size(directory: Path, generation: int) -> int:
    try:
        return path_of(directory, generation).stat().st_size
    except FileNotFoundError:
        return 0
