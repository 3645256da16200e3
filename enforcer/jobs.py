"""What cap-enforcer does on each pass: send the outbox, close periods, keep house.

The FreeRADIUS module decides in-line and writes the outbox; this acts on it.
Each action is leased (``store.claim_actions``) before it is sent, so several
enforcers share one outbox without sending anything twice, and an enforcer
killed mid-batch leaves leases that run out and are retried by another: a
CoA is idempotent on the NAS, a lost one is not. Sends run in a bounded pool,
so one dead NAS delays only its own actions.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from rlm_cap import counters, ledger, policy, store

from . import coa, notify
from .config import EnforcerConfig

log = logging.getLogger("enforcer")

DONE, FAILED, SUPERSEDED = "done", "failed", "superseded"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Enforcer:
    def __init__(self, engine: Engine, config: EnforcerConfig, client: coa.Client | None = None, clock=utcnow):
        self.engine, self.config, self.clock = engine, config, clock
        self.client = client or coa.Client(timeout=config.coa_timeout, retries=config.coa_attempts)

    # ------------------------------------------------------------------ outbox

    def send_actions(self) -> int:
        """One pass over due CoA/Disconnect actions; returns how many were handled."""
        return self._pass(notifications=False, handle=self._send_state_action)

    def send_notifications(self) -> int:
        """One pass over due notifications; a failed send is retried, never blocks enforcement."""
        return self._pass(notifications=True, handle=self._send_notification)

    def _pass(self, notifications: bool, handle) -> int:
        """Claim and handle batches until fewer than a full batch is due: a backlog
        does not wait for the next interval."""
        handled = 0
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="enforcer") as pool:
            while True:
                now = self.clock()
                lease = now + timedelta(seconds=self.config.lease)
                claimed = store.run_in_transaction(self.engine, lambda conn: store.claim_actions(
                    conn, self.config.node, now, lease, self.config.batch_size, notifications))
                for action, error in zip(claimed, pool.map(self._guarded(handle), claimed)):
                    if error is not None:
                        log.error("action=%s kind=%s error=%r", action["id"], action["kind"], error)
                handled += len(claimed)
                if len(claimed) < self.config.batch_size:
                    return handled

    def _guarded(self, handle):
        def run(action):
            now = self.clock()
            if not store.run_in_transaction(self.engine, lambda conn: store.renew_lease(
                    conn, action["id"], self.config.node, now, now + timedelta(seconds=self.config.lease))):
                # Our lease ran out while earlier sends of this batch were slow: another
                # enforcer may have it now. Sending it too would send it twice.
                log.warning("action=%s lease lost before sending; left to its new owner", action["id"])
                return None
            try:
                handle(action)
            except Exception as error:  # noqa: BLE001 - one action's fault must not stop the pass
                self._retry_or_fail(action, f"error: {error!r}")
                return error
            return None
        return run

    def _finish(self, action: dict, status: str, result: str, history_kind: str | None = None) -> None:
        def work(conn):
            if store.finish_action(conn, action["id"], self.config.node, status, result, self.clock()) \
                    and history_kind:
                store.add_history(conn, action["service_id"], self.clock(), history_kind, "system", detail=result)
        store.run_in_transaction(self.engine, work)
        log.info("action=%s service=%s kind=%s status=%s result=%r", action["id"], action["service_id"],
                 action["kind"], status, result)

    def _retry_or_fail(self, action: dict, result: str, history_kind: str | None = None) -> None:
        if action["attempts"] >= self.config.max_attempts:
            self._finish(action, FAILED, f"gave up after {action['attempts']} attempts: {result}", history_kind)
            return
        delay = min(2 ** action["attempts"], 300)
        store.run_in_transaction(self.engine, lambda conn: store.retry_action(
            conn, action["id"], self.config.node, self.clock() + timedelta(seconds=delay), result))
        log.warning("action=%s service=%s kind=%s retry_in=%ss result=%r", action["id"], action["service_id"],
                    action["kind"], delay, result)

    def _send_state_action(self, action: dict) -> None:
        """CoA (fixed, reduce, restore) or Disconnect (block) to every open session of the service."""
        def targets(conn):
            if store.newer_state_action(conn, action["service_id"], action["id"]):
                return None
            return [(s, store.find_nas(conn, s["nas_ip"] or s["nas"]))
                    for s in store.open_sessions(conn, action["service_id"])]
        found = store.run_in_transaction(self.engine, targets)
        if found is None:
            self._finish(action, SUPERSEDED, "a later CAP action for this service replaces it")
            return
        what = action["kind"] + (f" {action['rate']}" if action["rate"] else "")
        if not found:
            self._finish(action, DONE, f"{what}: no open session; applies at the next login", "coa")
            return
        if action["kind"] != "block" and not action["rate"]:
            self._finish(action, DONE, f"{what}: the plan has no rate to send; applies at the next login", "coa")
            return
        outcomes, retry, failed = [], False, False
        for session, nas_row in found:
            address = session["nas_ip"] or session["nas"]
            if nas_row is None:
                outcomes.append(f"{address}: no entry in the nas table (add it: capctl nas add {address} ...)")
                failed = True
                continue
            target = coa.Nas(nas_row["nasname"], nas_row["secret"], nas_row["coa_port"], nas_row["type"] or "mikrotik")
            ref = coa.Session(session["username"], session["acct_session_id"], session["framed_ip"],
                              session["nas_ip"])
            result = (self.client.disconnect(target, ref) if action["kind"] == "block"
                      else self.client.change_rate(target, ref, action["rate"]))
            outcomes.append(f"{address} session {session['acct_session_id']}: {result.detail or result.outcome}")
            if result.outcome == coa.TIMEOUT:
                retry = True
            elif result.session_gone:
                # The NAS no longer has it: close it here instead of retrying forever.
                store.run_in_transaction(self.engine, lambda conn: store.close_session(conn, session["id"], counters.CLOSED_AS_GONE))
            elif result.outcome == coa.NAK:
                failed = True
        summary = f"{what} -> " + "; ".join(outcomes)
        if retry:
            self._retry_or_fail(action, summary, "coa")
        else:
            self._finish(action, FAILED if failed else DONE, summary, "coa")

    def _send_notification(self, action: dict) -> None:
        now = self.clock()

        def gather(conn):
            rule = store.notification_rule(conn, action["rule_id"]) if action["rule_id"] else None
            service = store.find_service(conn, action["service_id"])
            if rule is None or service is None:
                return None
            customer = store.find_customer(conn, service["customer_id"])
            plan = store.find_plan(conn, service["plan_id"])
            source = rule["source"] if rule["source"] in policy.THRESHOLD_SOURCES else "total"
            used, size = policy.usage_of(source, store.load_buckets(conn, service["id"], now), now)
            return rule, service, customer, plan["name"], used, size
        gathered = store.run_in_transaction(self.engine, gather)
        if gathered is None:
            self._finish(action, FAILED, "the notification rule or the service no longer exists")
            return
        rule, service, customer, plan_name, used, size = gathered
        context = notify.notification_context(service, customer, plan_name, used, size)
        try:
            subject, body = notify.render_message(rule["subject"], rule["body"], context)
        except ValueError as error:  # the same template fails the same way on every retry
            self._finish(action, FAILED, f"the rule's template cannot be rendered: {error}")
            log.error("action=%s rule=%s template error=%s", action["id"], rule["id"], error)
            return
        sent, problems = [], []
        for channel in (("email", "sms") if rule["channel"] == "both" else (rule["channel"],)):
            problem = self._deliver(channel, customer, subject, body)
            (problems if problem else sent).append(problem or channel)
        if problems and not sent:
            self._retry_or_fail(action, "; ".join(problems))
            return
        self._finish(action, DONE, f"{rule['source']} {rule['threshold_percent']}% sent by {', '.join(sent)}"
                     + (f"; {'; '.join(problems)}" if problems else ""), "notification")

    def _deliver(self, channel: str, customer: dict, subject: str, body: str) -> str | None:
        """Send on one channel; None when sent, else why not."""
        try:
            if channel == "email":
                if not customer["email"]:
                    return "email: the customer has no address"
                if self.config.smtp is None:
                    return "email: no [smtp] configured"
                notify.send_email(self.config.smtp, customer["email"], subject, body)
            else:
                if not customer["phone"]:
                    return "sms: the customer has no phone number"
                if self.config.sms is None:
                    return "sms: no [sms] gateway configured"
                notify.send_sms(self.config.sms, customer["phone"], body)
        except notify.SendError as error:
            return f"{channel}: {error}"
        return None

    # ------------------------------------------------------------------ periods and housekeeping

    def close_periods(self) -> int:
        now = self.clock()
        due = store.run_in_transaction(self.engine, lambda conn: ledger.close_periods(conn, now))
        if due:
            log.info("job=close_periods services=%s", due)
        return due

    def housekeeping(self) -> tuple[int, int]:
        now = self.clock()
        expired = store.run_in_transaction(self.engine, lambda conn: ledger.record_expiries(conn, now))
        stale = store.run_in_transaction(self.engine, lambda conn: store.close_stale_sessions(
            conn, now - timedelta(seconds=self.config.stale_after)))
        if expired or stale:
            log.info("job=housekeeping expired_buckets=%s stale_sessions=%s", expired, stale)
        return expired, stale

    def run_once(self) -> dict[str, object]:
        """Every job once, in order (for cron and tests)."""
        return {"periods": self.close_periods(), "actions": self.send_actions(),
                "notifications": self.send_notifications(), "housekeeping": self.housekeeping()}
