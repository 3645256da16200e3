"""The ledger on real databases (SQLite and MariaDB): accounting, CAP, top-ups, periods."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from rlm_cap import counters, ledger, store
from rlm_cap.counters import AccountingRecord

from .conftest import GB, NOW

NAS = "192.0.2.1"


def record(status, at, down=None, up=None, session_time=None, session="s1", user="alice@isp", nas=NAS,
           gigawords=True):
    def split(total):
        if total is None:
            return None, None
        return total % 2**32, (total >> 32) if gigawords else None
    out_octets, out_giga = split(down)
    in_octets, in_giga = split(up)
    return AccountingRecord(status, nas, session, user, at, input_octets=in_octets, input_gigawords=in_giga,
                            output_octets=out_octets, output_gigawords=out_giga, session_time=session_time)


def apply(engine, *records, keep_unknown=False):
    results = []
    for rec in records:
        results.append(store.run_in_transaction(engine, lambda c: ledger.apply_record(c, rec, keep_unknown)))
    return results


def period_row(engine, service_id, at=NOW):
    with engine.begin() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, service_id))
        return store.find_period(conn, service_id, ctx.period(at).start)


def buckets_by_kind(engine, service_id):
    with engine.begin() as conn:
        rows = store.bucket_rows(conn, service_id)
    result = {}
    for row in rows:
        result.setdefault(row["kind"], []).append(row)
    return result


def service(engine, service_id):
    with engine.begin() as conn:
        return store.find_service(conn, service_id)


def actions(engine, service_id):
    with engine.begin() as conn:
        return store.list_actions(conn, service_id)


def history(engine, service_id):
    with engine.begin() as conn:
        return store.list_history(conn, service_id)


def session_stream(start, totals, step=timedelta(minutes=5), **kwargs):
    """Start, one Interim per (down, up) total, then nothing more."""
    yield record(counters.START, start, **kwargs)
    for i, (down, up) in enumerate(totals, 1):
        yield record(counters.INTERIM, start + i * step, down, up, int((i * step).total_seconds()), **kwargs)


def test_session_counts_exact_usage_per_direction(engine, world):
    sid = world["service_id"]
    start = NOW
    apply(engine, *session_stream(start, [(100, 10), (300, 30), (2**32 + 5, 2**31)]))
    apply(engine, record(counters.STOP, start + timedelta(minutes=20), 2**32 + 500, 2**31 + 7, 1200))
    row = period_row(engine, sid)
    assert row["download_bytes"] == 2**32 + 500
    assert row["upload_bytes"] == 2**31 + 7
    assert row["counted_bytes"] == 2**32 + 500 + 2**31 + 7
    monthly = buckets_by_kind(engine, sid)["monthly"][0]
    assert monthly["used"] == 2**32 + 500 + 2**31 + 7


def test_retransmits_and_late_interims_count_once(engine, world):
    sid = world["service_id"]
    first = record(counters.INTERIM, NOW + timedelta(minutes=5), 1000, 100, 300)
    second = record(counters.INTERIM, NOW + timedelta(minutes=10), 3000, 300, 600)
    apply(engine, record(counters.START, NOW), first, second, first, second, second)
    assert period_row(engine, sid)["counted_bytes"] == 3300


def test_counterless_stop_keeps_totals_and_reused_id_after_nas_reboot_is_a_new_session(engine, world):
    sid = world["service_id"]
    apply(engine, *session_stream(NOW, [(5000, 500)]))
    apply(engine, record(counters.STOP, NOW + timedelta(minutes=6)))  # no counters at all
    assert period_row(engine, sid)["counted_bytes"] == 5500
    apply(engine, record(counters.ACCOUNTING_ON, NOW + timedelta(minutes=7), session="", user=""))
    # After the reboot the NAS reuses "s1": its small totals are a new session's.
    apply(engine, record(counters.INTERIM, NOW + timedelta(minutes=12), 700, 70, 300))
    assert period_row(engine, sid)["counted_bytes"] == 5500 + 770
    with engine.begin() as conn:
        rows = store.session_rows(conn, "alice@isp")
    assert [r["closed"] for r in rows] == [counters.CLOSED_BY_NAS_RESTART, None]


def test_unknown_user_stores_nothing_unless_configured(engine, world):
    rec = record(counters.INTERIM, NOW, 100, 10, 60, user="nobody")
    assert apply(engine, rec)[0].note == "unknown-user"
    with engine.begin() as conn:
        assert store.session_rows(conn, "nobody") == []
    apply(engine, rec, keep_unknown=True)
    with engine.begin() as conn:
        kept = store.session_rows(conn, "nobody")
    assert len(kept) == 1 and kept[0]["output_total"] == 100 and kept[0]["service_id"] is None


def test_direction_down_counts_download_only(engine, world):
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], direction="down")
    apply(engine, *session_stream(NOW, [(1000, 999)]))
    row = period_row(engine, world["service_id"])
    assert (row["counted_bytes"], row["upload_bytes"], row["download_bytes"]) == (1000, 999, 1000)


def test_bonus_frame_split_across_four_oclock(engine, world):
    """03:00 -> 05:00 half inside 00:00-04:00: half to the bonus bucket, half to monthly."""
    sid = world["service_id"]
    night = datetime(2026, 11, 3, 3, 0, tzinfo=timezone.utc)
    apply(engine, record(counters.START, night),
          record(counters.INTERIM, night + timedelta(hours=2), 2 * GB, 0, 7200))
    kinds = buckets_by_kind(engine, sid)
    assert kinds["bonus"][0]["used"] == GB
    assert kinds["monthly"][0]["used"] == GB
    assert period_row(engine, sid, night)["bonus_bytes"] == GB


def test_crossing_the_cap_queues_the_plan_action_once_and_topup_restores(engine, world):
    sid = world["service_id"]
    apply(engine, *session_stream(NOW, [(6 * GB, 0), (11 * GB, 0), (12 * GB, 0)]))
    assert service(engine, sid)["cap_state"] == "capped"
    cap = [a for a in actions(engine, sid) if a["kind"] == "reduce"]
    assert len(cap) == 1 and cap[0]["rate"] == "5M/10M"
    assert period_row(engine, sid)["overuse_bytes"] == 2 * GB
    notify = [a for a in actions(engine, sid) if a["kind"] == "notify"]
    assert len(notify) == 1  # the 80 % rule, once in the period

    with engine.begin() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, sid))
        ledger.apply_topup(conn, ctx, "admin", "op", NOW + timedelta(hours=1),
                           store.find_topup_plan(conn, world["plan_id"], "5GB"))
    assert service(engine, sid)["cap_state"] == "ok"
    restore = [a for a in actions(engine, sid) if a["kind"] == "restore"]
    assert len(restore) == 1 and restore[0]["rate"] == "10M/20M"
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("40.00")
        assert [t["amount"] for t in store.list_transactions(conn, world["customer_id"])] == [Decimal("-10.00")]
    topup = buckets_by_kind(engine, sid)["topup"][0]
    assert topup["used"] == 0  # an operator's top-up does not pay for earlier over-use
    assert [h["kind"] for h in history(engine, sid)] == ["cap_action", "topup", "restore"]


def test_auto_topup_applied_in_line_with_trigger_and_balance(engine, world):
    sid = world["service_id"]
    with engine.begin() as conn:
        topup = store.find_topup_plan(conn, world["plan_id"], "5GB")
        store.update_plan(conn, world["plan_id"], auto_topup_plan_id=topup.id, auto_topup_trigger_percent=10)
        store.update_customer(conn, world["customer_id"], auto_topup=True)
    # 10 GB + 0.4 GB: within the 10 % trigger (0.5 GB) -> still ok, no top-up yet.
    apply(engine, *session_stream(NOW, [(10 * GB + 4 * GB // 10, 0)]))
    assert service(engine, sid)["cap_state"] == "ok"
    assert "topup" not in buckets_by_kind(engine, sid)
    # Past the trigger: the auto top-up takes the over-use.
    apply(engine, record(counters.INTERIM, NOW + timedelta(minutes=10), 10 * GB + 6 * GB // 10, 0, 600))
    topups = buckets_by_kind(engine, sid)["topup"]
    assert len(topups) == 1 and topups[0]["origin"] == "auto" and topups[0]["used"] == 6 * GB // 10
    assert period_row(engine, sid)["overuse_bytes"] == 0
    assert service(engine, sid)["cap_state"] == "ok"
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("40.00")
        described = store.list_transactions(conn, world["customer_id"])[0]["description"]
    assert described == "Auto Top-Up 5 GB for Home internet"


def test_auto_topup_refused_by_balance_check_caps_the_service(engine, world):
    sid = world["service_id"]
    with engine.begin() as conn:
        topup = store.find_topup_plan(conn, world["plan_id"], "5GB")
        store.update_plan(conn, world["plan_id"], auto_topup_plan_id=topup.id)
        store.update_customer(conn, world["customer_id"], auto_topup=True, balance=Decimal("3"))
        store.set_setting(conn, "global", 0, "check_balance", "yes")
    apply(engine, *session_stream(NOW, [(10 * GB + 1, 0)]))
    assert service(engine, sid)["cap_state"] == "capped"
    assert "topup" not in buckets_by_kind(engine, sid)
    cap = [h for h in history(engine, sid) if h["kind"] == "cap_action"]
    assert "balance 3.00 is below the price 10.00" in cap[0]["detail"]


def test_compensation_charges_the_overuse_of_the_crossing_update_only(engine, world):
    sid = world["service_id"]
    with engine.begin() as conn:
        store.update_plan(conn, world["plan_id"], compensate=True, overuse_price_per_gb=Decimal("2"))
    apply(engine, *session_stream(NOW, [(9 * GB, 0), (12 * GB, 0), (13 * GB, 0)]))
    kinds = buckets_by_kind(engine, sid)
    assert [(b["size"], b["used"]) for b in kinds["compensation"]] == [(2 * GB, 2 * GB)]
    # The crossing update's 2 GB were charged; the next 1 GB (already capped) is over-use.
    assert period_row(engine, sid)["overuse_bytes"] == GB
    with engine.begin() as conn:
        assert store.find_customer(conn, world["customer_id"])["balance"] == Decimal("46.00")


def test_period_rollover_is_created_once_and_expires(engine, world):
    sid = world["service_id"]
    apply(engine, *session_stream(NOW, [(4 * GB, 0)]))
    december = datetime(2026, 12, 1, 0, 30, tzinfo=timezone.utc)
    apply(engine, record(counters.INTERIM, december, 4 * GB + 100, 0, 3600 * 24 * 28))
    apply(engine, record(counters.INTERIM, december + timedelta(minutes=5), 4 * GB + 200, 0, 3600 * 24 * 28 + 300))
    rollover = buckets_by_kind(engine, sid)["rollover"]
    assert len(rollover) == 1
    assert rollover[0]["size"] == 6 * GB
    assert rollover[0]["valid_until"] == datetime(2027, 1, 1, tzinfo=timezone.utc)  # rollover_months = 1
    assert [h["kind"] for h in history(engine, sid)] == ["rollover"]
    # The new period counts against its own buckets (monthly, and bonus for the
    # part of the interval inside 00:00-04:00), not the rollover.
    kinds = buckets_by_kind(engine, sid)
    december_start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    december = [b for b in kinds["monthly"] + kinds["bonus"] if b["period_start"] == december_start]
    assert sum(b["used"] for b in december) == 200
    assert kinds["monthly"][0]["used"] == 4 * GB
    assert rollover[0]["used"] == 0


def test_expired_topup_is_not_counted_and_use_topup_first_takes_topups_before_monthly(engine, world):
    sid = world["service_id"]
    with engine.begin() as conn:
        store.add_bucket(conn, sid, "topup", GB, NOW - timedelta(days=40), NOW - timedelta(days=1), "admin", NOW)
        live = store.add_bucket(conn, sid, "topup", GB, NOW - timedelta(days=1), None, "admin", NOW)
        store.set_setting(conn, "service", sid, "use_topup_first", "yes")
    apply(engine, *session_stream(NOW, [(GB + 5, 0)]))
    used = {b["id"]: b["used"] for b in buckets_by_kind(engine, sid)["topup"]}
    assert used[live] == GB
    assert sorted(used.values()) == [0, GB]
    assert buckets_by_kind(engine, sid)["monthly"][0]["used"] == 5


def test_remove_topup_and_bonus(engine, world):
    sid = world["service_id"]
    with engine.begin() as conn:
        ctx = ledger.load_context(conn, store.find_service(conn, sid))
        bucket = ledger.apply_topup(conn, ctx, "admin", "op", NOW, size=3 * GB, price=Decimal("0"))
        assert ledger.remove_topup(conn, ctx, bucket, GB, "op", NOW) == GB
        with pytest.raises(ledger.Refused):
            ledger.remove_topup(conn, ctx, bucket, 5 * GB, "op", NOW)
        bonus = ledger.add_bonus(conn, ctx, 2 * GB, 1, "op", NOW)
    kinds = buckets_by_kind(engine, sid)
    assert kinds["topup"][0]["size"] == 2 * GB
    assert [b["id"] for b in kinds["bonus"] if b["origin"] == "admin"] == [bonus]
    assert [(h["kind"], h["size"]) for h in history(engine, sid)] == [
        ("topup", 3 * GB), ("removal", -GB), ("bonus", 2 * GB)]


def test_auto_topup_refused_under_lock_caps_instead_of_failing(engine, world):
    """evaluate() reads the balance unlocked; if the locked row cannot pay, the record still applies."""
    sid = world["service_id"]
    with engine.begin() as conn:
        topup = store.find_topup_plan(conn, world["plan_id"], "5GB")
        store.update_plan(conn, world["plan_id"], auto_topup_plan_id=topup.id)
        store.update_customer(conn, world["customer_id"], auto_topup=True)
        store.set_setting(conn, "global", 0, "check_balance", "yes")
    cache = ledger.ContextCache(ttl=3600)
    apply(engine, record(counters.START, NOW))
    with engine.begin() as conn:
        ledger.load_context(conn, store.find_service(conn, sid), cache)  # caches balance 50.00
        store.update_customer(conn, world["customer_id"], balance=Decimal("1"))  # spent meanwhile
    with engine.begin() as conn:
        state = ledger.apply_record(conn, record(counters.INTERIM, NOW + timedelta(minutes=1), 10 * GB + 1, 0, 60),
                                    cache=cache).state
    assert state == "capped"
    assert "topup" not in buckets_by_kind(engine, sid)
    [cap] = [h for h in history(engine, sid) if h["kind"] == "cap_action"]
    assert "balance 1.00 is below the price 10.00" in cap["detail"]


def test_a_new_period_restores_a_capped_service_once(engine, world):
    sid = world["service_id"]
    apply(engine, *session_stream(NOW, [(11 * GB, 0)]))
    assert service(engine, sid)["cap_state"] == "capped"
    december = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    apply(engine, record(counters.INTERIM, december, 11 * GB + 100, 0, 3600 * 24 * 28))
    assert service(engine, sid)["cap_state"] == "ok"
    assert [a["kind"] for a in actions(engine, sid) if a["kind"] != "notify"] == ["reduce", "restore"]


def test_close_periods_is_set_based_idempotent_and_rolls_over(engine, world):
    """The enforcer's period close: every due service at once, twice changes nothing."""
    sid = world["service_id"]
    with engine.begin() as conn:
        second = store.add_service(conn, world["customer_id"], world["plan_id"], "bob@isp", "", NOW, "ok")
    apply(engine, *session_stream(NOW, [(4 * GB, 0)]))
    apply(engine, *session_stream(NOW, [(11 * GB, 0)], user="bob@isp", session="b1"))
    assert service(engine, second)["cap_state"] == "capped"
    december = datetime(2026, 12, 1, 0, 5, tzinfo=timezone.utc)
    for _ in range(2):
        with engine.begin() as conn:
            ledger.close_periods(conn, december)
    for service_id, unused in ((sid, 6 * GB), (second, 0)):
        kinds = buckets_by_kind(engine, service_id)
        assert [b["period_start"].month for b in kinds["monthly"]] == [11, 12]
        assert [b["size"] for b in kinds.get("rollover", [])] == ([unused] if unused else [])
    assert service(engine, second)["cap_state"] == "ok"
    assert [a["kind"] for a in actions(engine, second) if a["kind"] == "restore"] == ["restore"]
    assert [h["kind"] for h in history(engine, sid)] == ["rollover"]
    with engine.begin() as conn:
        assert [p["period_start"].month for p in store.list_periods(conn, sid)] == [11, 12]
        assert ledger.close_periods(conn, december) == 0  # nothing due any more


def test_batch_equals_one_by_one_for_a_start_after_stop_and_reordered_sessions(db_url, world):
    """Review findings: a Start after a Stop in one batch lost the old row's Stop; a reload at a
    period boundary dropped buckets an earlier-stamped record of the batch still needed."""
    late = datetime(2026, 11, 30, 23, 50, tzinfo=timezone.utc)
    stream = [record(counters.START, NOW), record(counters.INTERIM, NOW + timedelta(minutes=5), 400, 40, 300),
              record(counters.STOP, NOW + timedelta(minutes=6), 400, 40, 360), record(counters.START, NOW + timedelta(minutes=7)),
              record(counters.INTERIM, NOW + timedelta(minutes=9), 50, 5, 120),
              record(counters.START, late - timedelta(hours=1), session="s9"),
              record(counters.INTERIM, datetime(2026, 12, 1, 0, 10, tzinfo=timezone.utc), GB, 0, 4200, session="s9"),
              record(counters.INTERIM, late, 2 * GB, 0, 3600, session="s8")]
    results = []
    for mode in ("batch", "one by one"):
        engine = store.make_engine(db_url)
        from .conftest import _wipe
        if db_url.startswith("mysql"):
            _wipe(engine)
        else:
            store.metadata.drop_all(engine)
            store.create_schema(engine)
        from .conftest import make_world
        w = make_world(engine)
        if mode == "batch":
            store.run_in_transaction(engine, lambda c: ledger.apply_records(c, stream, cache=ledger.ContextCache()))
        else:
            apply(engine, *stream)
        with engine.begin() as conn:
            results.append(([(s["acct_session_id"], s["output_total"], s["closed"]) for s in store.session_rows(conn)],
                            [(b["kind"], b["period_start"], b["used"]) for b in store.bucket_rows(conn, w["service_id"])],
                            [(p["counted_bytes"], p["overuse_bytes"]) for p in store.list_periods(conn, w["service_id"])]))
        engine.dispose()
    assert results[0] == results[1]
    assert [s for s in results[0][0] if s[0] == "s1"] == [("s1", 400, "stop"), ("s1", 50, None)]


def test_a_stale_session_reopens_and_a_start_on_it_begins_a_new_one(engine, world):
    """Review finding: a session closed as stale stayed closed, so no CoA was ever sent to it."""
    apply(engine, *session_stream(NOW, [(100, 10)]))
    with engine.begin() as conn:
        assert store.close_stale_sessions(conn, NOW + timedelta(hours=1)) == 1
    apply(engine, record(counters.INTERIM, NOW + timedelta(hours=2), 200, 20, 7200))
    with engine.begin() as conn:
        assert store.open_sessions(conn, world["service_id"])[0]["output_total"] == 200
        store.close_stale_sessions(conn, NOW + timedelta(hours=3))
    apply(engine, record(counters.START, NOW + timedelta(hours=4)),
          record(counters.INTERIM, NOW + timedelta(hours=4, minutes=5), 70, 7, 300))
    with engine.begin() as conn:
        assert [(s["output_total"], s["closed"]) for s in store.session_rows(conn, "alice@isp")] == [
            (200, "stale"), (70, None)]
    assert period_row(engine, world["service_id"])["counted_bytes"] == 220 + 77


def test_a_late_record_of_the_closed_period_does_not_recap_the_new_month(engine, world):
    """Review finding: an interim stamped 23:59:55 applied after the period close capped the
    service in December (and blocked it for the month) on November's buckets."""
    sid = world["service_id"]
    with engine.begin() as conn:
        store.set_time_frames(conn, world["plan_id"], [])
    apply(engine, *session_stream(NOW, [(9 * GB, 0)]))
    with engine.begin() as conn:
        ledger.close_periods(conn, datetime(2026, 12, 1, 0, 0, 30, tzinfo=timezone.utc))
    apply(engine, record(counters.INTERIM, datetime(2026, 11, 30, 23, 59, 55, tzinfo=timezone.utc),
                         11 * GB, 0, 3600 * 24 * 27))
    assert service(engine, sid)["cap_state"] == "ok"
    assert [a["kind"] for a in actions(engine, sid) if a["kind"] != "notify"] == []
    november = period_row(engine, sid, NOW)
    assert november["counted_bytes"] == 11 * GB  # the late bytes still count, in November
    # November's last 1 GB had rolled over into December; the late record used it: taken back.
    [rollover] = buckets_by_kind(engine, sid)["rollover"]
    assert (rollover["size"], rollover["used"]) == (0, 0)
    assert sorted((h["kind"], h["size"]) for h in history(engine, sid)) == [("rollover", -GB), ("rollover", GB)]
