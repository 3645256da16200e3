"""The local append-only journal of ``journal`` mode: format, writer, reader, rotation."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import datetime, timezone

import pytest

from rlm_cap import counters, journal
from rlm_cap.counters import AccountingRecord

AT = datetime(2026, 11, 3, 10, 0, 0, 123456, tzinfo=timezone.utc)


def rec(i=0, user="alice@isp", **fields):
    values = dict(input_octets=1000 + i, input_gigawords=1, output_octets=2000 + i, output_gigawords=0,
                  session_time=60 + i, framed_ip="100.64.0.9", nas_ip="192.0.2.1")
    values.update(fields)
    return AccountingRecord(counters.INTERIM, "192.0.2.1", f"s{i}", user, AT, **values)


def lines_of(path):
    return path.read_bytes().split(b"\n")


@pytest.fixture
def jdir(tmp_path):
    return tmp_path / "journal"


@pytest.fixture
def writer(jdir):
    w = journal.Writer(jdir, 1)
    yield w
    try:
        w.close()
    except OSError:
        pass  # closed by the test


# --------------------------------------------------------------------------- encode / decode

@pytest.mark.parametrize("record", [
    rec(),
    rec(user="Jürgen Müller@isp.example"),
    rec(user="用户@运营商"),
    rec(user="emoji 😀 and \"quotes\" and \\ backslash"),
    rec(user="line\nbreak\rand\u2028separator"),
    AccountingRecord(counters.STOP, "bras-1", "66", "juniper", AT),  # every optional field None
    AccountingRecord(counters.ACCOUNTING_ON, "192.0.2.1", "", "", AT, nas_ip="192.0.2.1"),
    rec(input_octets=2**32 - 1, input_gigawords=2**32 - 1, output_octets=0, output_gigawords=None),
    rec(session_time=None, framed_ip=None),
])
def test_encode_decode_round_trip(record):
    line = journal.encode(record)
    assert isinstance(line, bytes)
    assert line.endswith(b"\n") and line.count(b"\n") == 1, "one record, one line"
    assert journal.decode(line) == record


@pytest.mark.parametrize("at", [
    datetime(2026, 11, 3, 10, 0, 0, 1, tzinfo=timezone.utc),
    datetime(2026, 11, 3, 10, 0, 0, 999999, tzinfo=timezone.utc),
    datetime(1970, 1, 1, tzinfo=timezone.utc),
    datetime(2100, 2, 28, 23, 59, 59, 500000, tzinfo=timezone.utc),
])
def test_time_keeps_microseconds_and_comes_back_in_utc(at):
    back = journal.decode(journal.encode(AccountingRecord(counters.START, "n", "s", "u", at)))
    assert back.time == at
    assert back.time.utcoffset().total_seconds() == 0


def test_line_is_utf8_json_with_the_format_number_first():
    line = journal.encode(rec(user="Jürgen"))
    assert "Jürgen".encode() in line  # not \u-escaped: the line stays short and readable
    fields = json.loads(line)
    assert fields[0] == journal.FORMAT and len(fields) == 13


@pytest.mark.parametrize("line", [
    b"garbage\n",
    b"\n",
    b"\xff\xfe\xfd\n",  # not UTF-8
    b"[1,\"Interim-Update\",\"n\",\"s\",\"u\",17\n",  # a torn record, terminated
    b"{\"a\": 1}\n",
    b"42\n",
    b"[2,\"Start\",\"n\",\"s\",\"u\",0,null,null,null,null,null,null,null]\n",  # unknown format
    b"[1,\"Start\",\"n\",\"s\",\"u\",0,null,null,null,null,null,null]\n",  # a field short
    b"[1,\"Start\",\"n\",\"s\",\"u\",\"noon\",null,null,null,null,null,null,null]\n",  # time of wrong type
    b"[1,\"Start\",\"n\",\"s\",\"u\",null,null,null,null,null,null,null,null]\n",
    b"[1,\"Start\",\"n\",\"s\",\"u\",1e300,null,null,null,null,null,null,null]\n",  # time beyond any date
    b"[" * 100000 + b"\n",  # nesting beyond the JSON decoder's recursion limit
])
def test_damaged_lines_raise_value_error_only(line):
    with pytest.raises(ValueError, match="not a journal record"):
        journal.decode(line)


# --------------------------------------------------------------------------- writer

def test_writer_creates_private_directory_and_file(jdir):
    old = os.umask(0)  # whatever the umask, the journal is private
    try:
        w = journal.Writer(jdir, 1)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(jdir.stat().st_mode) == 0o700
        assert stat.S_IMODE(journal.path_of(jdir, 1).stat().st_mode) == 0o600
        assert w.generation == 1
    finally:
        w.close()


def test_writer_makes_an_existing_directory_private(jdir):
    jdir.mkdir(mode=0o755)
    os.chmod(jdir, 0o755)
    journal.Writer(jdir, 1).close()
    assert stat.S_IMODE(jdir.stat().st_mode) == 0o700


@pytest.mark.parametrize("fsync", [False, True])
def test_writer_appends_one_line_per_record(jdir, fsync):
    w = journal.Writer(jdir, 1, fsync=fsync)
    records = [rec(i) for i in range(5)]
    try:
        for r in records:
            w.append(r)
    finally:
        w.close()
    lines = lines_of(journal.path_of(jdir, 1))
    assert lines[-1] == b"" and len(lines) == 6
    assert [journal.decode(line + b"\n") for line in lines[:-1]] == records


def test_reopening_appends_after_existing_records(jdir):
    for i in range(2):
        w = journal.Writer(jdir, 1)
        w.append(rec(i))
        w.close()
    batch = journal.read_batch(jdir, 1, 0, 10)
    assert [r for _, r in batch.records] == [rec(0), rec(1)]
    assert batch.damaged == []


def test_reopening_a_complete_or_empty_file_adds_nothing(jdir, writer):
    path = journal.path_of(jdir, 1)
    journal.Writer(jdir, 1).close()
    assert path.stat().st_size == 0  # an empty file gets no stray newline
    writer.append(rec())
    size = path.stat().st_size
    journal.Writer(jdir, 1).close()
    assert path.stat().st_size == size


def test_torn_last_record_is_terminated_and_reported_damaged(jdir, writer):
    writer.append(rec(0))
    writer.append(rec(1))
    writer.close()
    path = journal.path_of(jdir, 1)
    torn_at = path.stat().st_size
    half = journal.encode(rec(2))[:40]
    with open(path, "ab") as handle:  # a crash in the middle of a write()
        handle.write(half)

    after = journal.Writer(jdir, 1)  # the next start
    try:
        after.append(rec(3))
    finally:
        after.close()
    assert path.read_bytes()[torn_at:] == half + b"\n" + journal.encode(rec(3))

    batch = journal.read_batch(jdir, 1, 0, 100)
    assert [r for _, r in batch.records] == [rec(0), rec(1), rec(3)]
    assert len(batch.damaged) == 1
    assert batch.damaged[0][0] == torn_at
    assert "not a journal record" in batch.damaged[0][1]
    assert batch.records[2][0] == torn_at + len(half) + 1
    assert batch.end == path.stat().st_size


def test_append_after_close_is_an_os_error(writer):
    """What the module turns into NOT_DURABLE (no answer, the NAS retransmits)."""
    writer.close()
    with pytest.raises(OSError):
        writer.append(rec())


def test_concurrent_appends_stay_whole_lines(jdir, writer):
    def work(t):
        for i in range(200):
            writer.append(rec(i, user=f"user{t}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batch = journal.read_batch(jdir, 1, 0, 10_000)
    assert batch.damaged == []
    assert len(batch.records) == 800
    for t in range(4):
        assert [r.session_id for _, r in batch.records if r.username == f"user{t}"] == [
            f"s{i}" for i in range(200)]


# --------------------------------------------------------------------------- reader

def test_read_batch_offsets_and_end(jdir, writer):
    records = [rec(i) for i in range(3)]
    offsets = []
    for r in records:
        offsets.append(journal.file_size(jdir, 1))
        writer.append(r)
    batch = journal.read_batch(jdir, 1, 0, 100)
    assert batch.generation == 1
    assert batch.records == list(zip(offsets, records))
    assert batch.end == journal.file_size(jdir, 1)


def test_read_batch_stops_at_an_incomplete_last_line_and_resumes(jdir, writer):
    writer.append(rec(0))
    writer.append(rec(1))
    complete = journal.file_size(jdir, 1)
    line = journal.encode(rec(2))
    path = journal.path_of(jdir, 1)
    with open(path, "ab") as handle:  # a write() still in progress, as the reader may see it
        handle.write(line[:25])
    batch = journal.read_batch(jdir, 1, 0, 100)
    assert [r for _, r in batch.records] == [rec(0), rec(1)]
    assert batch.damaged == []
    assert batch.end == complete

    again = journal.read_batch(jdir, 1, batch.end, 100)
    assert (again.records, again.damaged, again.end) == ([], [], complete)

    with open(path, "ab") as handle:
        handle.write(line[25:])
    rest = journal.read_batch(jdir, 1, batch.end, 100)
    assert rest.records == [(complete, rec(2))]
    assert rest.end == path.stat().st_size


def test_read_batch_respects_the_limit(jdir, writer):
    for i in range(5):
        writer.append(rec(i))
    position, seen = 0, []
    for expected in (2, 2, 1, 0):
        batch = journal.read_batch(jdir, 1, position, 2)
        assert len(batch.records) == expected
        seen += [r for _, r in batch.records]
        assert batch.end >= position
        position = batch.end
    assert seen == [rec(i) for i in range(5)]
    assert position == journal.file_size(jdir, 1)


def test_limit_counts_damaged_lines_too(jdir, writer):
    writer.append(rec(0))
    with open(journal.path_of(jdir, 1), "ab") as handle:
        handle.write(b"garbage\n")
    writer.append(rec(1))
    first = journal.read_batch(jdir, 1, 0, 2)
    assert len(first.records) == 1 and len(first.damaged) == 1
    second = journal.read_batch(jdir, 1, first.end, 2)
    assert [r for _, r in second.records] == [rec(1)] and second.damaged == []


def test_read_batch_of_a_missing_generation_is_empty(jdir):
    jdir.mkdir()
    batch = journal.read_batch(jdir, 7, 123, 10)
    assert (batch.generation, batch.end, batch.records, batch.damaged) == (7, 123, [], [])
    assert journal.file_size(jdir, 7) == 0


def test_read_batch_with_limit_zero_reads_nothing(jdir, writer):
    writer.append(rec())
    batch = journal.read_batch(jdir, 1, 0, 0)
    assert (batch.records, batch.end) == ([], 0)


# --------------------------------------------------------------------------- rotation

def test_rotate_only_when_the_applied_position_is_the_file_size(jdir, writer):
    writer.append(rec(0))
    writer.append(rec(1))
    size = journal.file_size(jdir, 1)
    assert writer.rotate(1, 0) is None
    assert writer.rotate(1, size - 1) is None
    assert writer.rotate(2, size) is None  # another generation's position
    assert writer.rotate(0, size) is None
    assert writer.generation == 1
    writer.append(rec(2))
    assert writer.rotate(1, size) is None  # a record arrived since: not applied yet
    size = journal.file_size(jdir, 1)

    assert writer.rotate(1, size) == 2
    assert writer.generation == 2
    writer.append(rec(3))
    assert journal.file_size(jdir, 1) == size  # the old file is left alone
    assert [r for _, r in journal.read_batch(jdir, 2, 0, 10).records] == [rec(3)]
    assert journal.generations(jdir) == [1, 2]
    assert stat.S_IMODE(journal.path_of(jdir, 2).stat().st_mode) == 0o600

    size2 = journal.file_size(jdir, 2)
    assert writer.rotate(1, size) is None  # generation 1 is no longer the writer's
    assert writer.rotate(2, size2) == 3
    assert journal.generations(jdir) == [1, 2, 3]


def test_rotate_of_an_empty_fully_applied_file(jdir, writer):
    assert writer.rotate(1, 0) == 2
    assert journal.file_size(jdir, 2) == 0


def test_generations_sorted_numerically_and_other_files_ignored(jdir):
    jdir.mkdir()
    for name in ("journal.10", "journal.2", "journal.1", "journal.tmp", "journal.3.bak", "journal.",
                 "other", "xjournal.4", "journal.1~"):
        (jdir / name).write_bytes(b"")
    assert journal.generations(jdir) == [1, 2, 10]


def test_generations_of_an_empty_directory(jdir):
    jdir.mkdir()
    assert journal.generations(jdir) == []


def test_path_of():
    from pathlib import Path
    assert journal.path_of(Path("/var/lib/rlm_cap/journal"), 12) == Path("/var/lib/rlm_cap/journal/journal.12")
