"""rlm_cap inside real FreeRADIUS 3.2 (multi-threaded, started on loopback ports), a pyrad NAS in front."""

from __future__ import annotations

import calendar
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyrad import packet as radius_packet

from cli.lab import SECRET, Nas, wait_for
from rlm_cap import store

from .conftest import GB

USER = "alice@isp"


def totals(engine, username=USER) -> tuple[int, int, int]:
    """(upload, download, bonus) of every period of the service."""
    with engine.begin() as conn:
        service = store.find_service(conn, username)
        rows = store.list_periods(conn, service["id"])
    return (sum(r["upload_bytes"] for r in rows), sum(r["download_bytes"] for r in rows),
            sum(r["bonus_bytes"] for r in rows))


def wait_totals(engine, expected, username=USER, timeout=20):
    wait_for(lambda: totals(engine, username)[:2] == expected, timeout=timeout,
             what=f"usage of {username} to reach {expected} (now {totals(engine, username)[:2]})")


@pytest.mark.parametrize("mode", ["journal", "sync"])
def test_start_five_interims_stop_gives_exact_usage(radius, engine, world, mode):
    nas = Nas(radius(mode))
    assert nas.accounting("Start", "s1", USER)
    for i in range(1, 6):
        assert nas.accounting("Interim-Update", "s1", USER, down=i * 10**8, up=i * 10**7, session_time=i * 60)
    assert nas.accounting("Stop", "s1", USER, down=5 * 10**8 + 5, up=5 * 10**7 + 3, session_time=301)
    wait_totals(engine, (5 * 10**7 + 3, 5 * 10**8 + 5))
    with engine.begin() as conn:
        [session] = store.session_rows(conn, USER)
    assert session["closed"] == "stop" and session["counter_time"] == 301


def test_faulty_stream_counts_every_byte_once(radius, engine, world):
    """Retransmits, reordering, Gigawords past 2^32, a counter reset, a Stop without
    counters, an Interim without Start, and a NAS reboot reusing session ids."""
    nas = Nas(radius())
    g = 2**32
    send = nas.accounting
    assert send("Start", "s1", USER)
    assert send("Interim-Update", "s1", USER, down=1000, up=100, session_time=60)
    assert send("Interim-Update", "s1", USER, down=1000, up=100, session_time=60)  # retransmit
    assert send("Interim-Update", "s1", USER, down=g + 5000, up=300, session_time=180)  # before the 120 s one
    assert send("Interim-Update", "s1", USER, down=g - 10, up=200, session_time=120)  # late: ignored
    assert send("Interim-Update", "s1", USER, down=400, up=50, session_time=240)  # counter reset: counts 400/50
    assert send("Stop", "s1", USER, session_time=300)  # no counters: totals kept
    # An Interim without Start (another session), then the NAS reboots and reuses "s2".
    assert send("Interim-Update", "s2", USER, down=7000, up=70, session_time=600)
    assert send("Accounting-On")
    assert send("Interim-Update", "s2", USER, down=800, up=8, session_time=30)
    expected_down = (g + 5000) + 400 + 7000 + 800
    expected_up = 300 + 50 + 70 + 8
    wait_totals(engine, (expected_up, expected_down))
    with engine.begin() as conn:
        sessions = store.session_rows(conn, USER)
    assert [(s["acct_session_id"], s["closed"]) for s in sessions] == [
        ("s1", "nas-restart"), ("s2", "nas-restart"), ("s2", None)]


def test_bonus_frame_split_across_four_oclock(radius, engine, world):
    """With trust_event_timestamp, 03:00 -> 05:00 puts half the bytes in the 00:00-04:00 frame."""
    nas = Nas(radius(trust_event_timestamp="yes"))
    now = datetime.now(timezone.utc)
    night = calendar.timegm(datetime(now.year, now.month, 2, 3, 0, tzinfo=timezone.utc).timetuple())
    assert nas.accounting("Start", "s1", USER, event_time=night)
    assert nas.accounting("Interim-Update", "s1", USER, down=2 * GB, up=0, session_time=7200,
                          event_time=night + 7200)
    wait_totals(engine, (0, 2 * GB))
    assert totals(engine)[2] == GB
    with engine.begin() as conn:
        buckets = {b["kind"]: b["used"] for b in store.bucket_rows(conn, world["service_id"])}
    assert buckets == {"monthly": GB, "bonus": GB}


@pytest.mark.parametrize("action, expected", [
    ("block", None), ("fixed", "1M/1M"), ("reduce", "5M/10M")])
def test_login_of_a_capped_service_gets_the_plan_action(radius, engine, world, action, expected):
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], action=action, fixed_rate="1M/1M")
        store.set_time_frames(conn, world["plan_id"], [])  # the receive time must not fall in a bonus frame
    server = radius()
    nas = Nas(server)
    assert nas.accounting("Start", "s1", USER)
    assert nas.accounting("Interim-Update", "s1", USER, down=11 * GB, up=0, session_time=60)
    wait_for(lambda: _state(engine) == "capped", what="the service to be capped")

    def login_reply():
        reply = nas.login(USER)
        capped = reply.code == radius_packet.AccessReject or "Mikrotik-Rate-Limit" in reply
        return reply if capped else None
    reply = wait_for(login_reply, timeout=10, what="authorize to see the capped state")
    if expected is None:
        assert reply.code == radius_packet.AccessReject
        assert reply["Reply-Message"] == ["Your data cap is reached. Buy a top-up to reconnect."]
    else:
        assert reply.code == radius_packet.AccessAccept
        assert reply["Mikrotik-Rate-Limit"] == [expected]


def test_login_of_a_user_without_cap_is_left_alone(radius, engine, world):
    reply = Nas(radius()).login("somebody-else")
    assert reply.code == radius_packet.AccessAccept
    assert "Mikrotik-Rate-Limit" not in reply and "Reply-Message" not in reply


def test_unknown_user_is_answered_and_not_stored(radius, engine, world):
    nas = Nas(radius(mode="sync"))
    assert nas.accounting("Interim-Update", "x1", "nobody", down=5, up=5, session_time=5)
    with engine.begin() as conn:
        assert store.session_rows(conn, "nobody") == []


def test_invalid_utf8_is_answered_and_quarantined(radius, engine, world):
    server = radius()
    nas = Nas(server)
    assert nas.accounting("Interim-Update", "q1", b"bad\xff\xfeuser", down=10, up=1, session_time=5)
    wait_for(lambda: "q1" in server.quarantine(), what="the packet in the quarantine file")
    files = list((server.directory / "radacct").glob("rlm_cap-quarantine-*"))
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)


def _state(engine) -> str:
    with engine.begin() as conn:
        return store.find_service(conn, USER)["cap_state"]


def test_login_gets_the_remaining_quota_when_configured(radius, engine, world):
    server = radius(mode="sync", total_limit_reply="yes")
    nas = Nas(server)
    assert nas.accounting("Start", "s1", USER)
    with engine.begin() as conn:
        store.set_time_frames(conn, world["plan_id"], [])
    assert nas.accounting("Interim-Update", "s1", USER, down=3 * GB, up=0, session_time=60)
    left = 7 * GB  # 10 GB monthly limit - 3 GB

    def limit():
        reply = nas.login(USER)
        return reply if reply.get("Mikrotik-Total-Limit") == [left % 2**32] else None
    reply = wait_for(limit, timeout=10, what="the remaining quota in the Access-Accept")
    assert reply["Mikrotik-Total-Limit-Gigawords"] == [left >> 32]


TRACES = Path(__file__).resolve().parents[2] / "shared" / "nas-traces"


def radclient(server, attributes) -> bool:
    """Send one Accounting-Request with radclient, which encodes vendor attributes
    (ERX-*, Cisco, ...) from FreeRADIUS's own dictionaries; True if answered."""
    text = "\n".join(f'{name} = "{value}"' for name, value in attributes)
    done = subprocess.run(["radclient", "-r", "1", "-t", "3", f"127.0.0.1:{server.acct_port}", "acct",
                           SECRET.decode()], input=text, capture_output=True, text=True, timeout=30)
    return "Accounting-Response" in done.stdout


@pytest.mark.skipif(not TRACES.is_dir(), reason="shared/nas-traces is beside the repository in CI and sessions")
def test_real_nas_traces_replayed_through_freeradius(radius, engine, world):
    """Every packet of every public capture is answered; the Juniper sessions are stored exactly."""
    traces = sorted(TRACES.glob("*.json"))
    users = {attr[1] for trace in traces for p in json.loads(trace.read_text())["packets"]
             for attr in p["attributes"] if attr[0] == "User-Name"}
    with engine.begin() as conn:
        for user in users:
            store.add_service(conn, world["customer_id"], world["plan_id"], user, "trace", datetime.now(timezone.utc),
                              "ok")
    server = radius(mode="sync")
    for trace in traces:
        for number, packet in enumerate(json.loads(trace.read_text())["packets"]):
            assert radclient(server, packet["attributes"]), f"{trace.name} packet {number} not answered"
    with engine.begin() as conn:
        pppoe = store.session_rows(conn, "juniper")
        dhcp = store.session_rows(conn, "ac:16:2d:75:9d:0a")
        meraki = store.session_rows(conn, "employeealex")
    assert [(s["acct_session_id"], s["closed"], s["counter_time"]) for s in pppoe] == [("66", "stop", 11)]
    assert [(s["acct_session_id"], s["closed"]) for s in dhcp] == [("47", "stop")]
    assert len(meraki) == 1  # the repeated Start is a retransmit, not a second session
    assert not server.quarantine()  # every capture is well-formed: none was quarantined
