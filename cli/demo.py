"""``make demo``: a month at a small ISP, the whole stack on loopback, on the embedded SQLite default.

It starts on 127.0.0.1 (the parts are in cli/lab.py): a mail server that keeps
what it receives, a simulated MikroTik (it sends Accounting-Requests and
answers CoA/Disconnect), FreeRADIUS with ``freeradius-conf/`` and rlm_cap, and
``cap-enforcer``. The operator's steps are real ``capctl`` commands. Four
subscribers then live through a month: the 80 % email, the CAP and its CoA, an
auto top-up, a block and its Disconnect, night-time bonus traffic, an
operator's top-up and the CoA that restores the speed, and the month close
with rollover. The demo checks each outcome and fails when one is missing.

Time: the MikroTik stamps every record with Event-Timestamp and this
FreeRADIUS trusts it (``trust_event_timestamp = yes``), so the month so far
plays in seconds; everything else runs on the real clock. The month close,
still in the future, is cap-enforcer's period-close job run with that moment as
"now" on a copy of the database, so the running stack stays in today.

    python -m cli.demo [--dir demo-data] [--keep]
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from pyrad import packet

from enforcer.config import EnforcerConfig
from enforcer.jobs import Enforcer
from rlm_cap import ledger, store
from rlm_cap.periods import Period, period_at
from rlm_cap.policy import BUCKET_KINDS, CAPPED
from rlm_cap.units import format_size

from . import lab
from .common import bar

GB = 10**9
UTC = ZoneInfo("UTC")
OPERATOR = "maria"  # RLM_CAP_ACTOR: the name history rows give the operator
MIKROTIK_IP = lab.LOOPBACK  # the NAS-IP-Address it sends: CoA goes back there
PACKETS = {packet.CoARequest: "CoA-Request", packet.DisconnectRequest: "Disconnect-Request",
           packet.CoAACK: "CoA-ACK", packet.CoANAK: "CoA-NAK", packet.DisconnectACK: "Disconnect-ACK",
           packet.DisconnectNAK: "Disconnect-NAK", None: "no answer"}
MAIL_BODY = ("Hello {{ customer.name }}, you have used {{ usage.percent }}% ({{ usage.used_text }}) "
             "of the {{ usage.size_text }} of your {{ plan }} plan this month. "
             "A 5 GB top-up costs 10.00.")
SESSIONS = {"alice@isp": "81a00001", "bob@isp": "81a00002", "carol@isp": "81a00003", "dave@isp": "81a00004"}
INDENT = " " * 18  # under the timeline's time column


class DemoFailed(click.ClickException):
    """An outcome of the story did not happen: the stack is broken."""


def section(title: str) -> None:
    click.secho(f"\n{title}", bold=True)


def note(text: str) -> None:
    click.echo(textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))


# --------------------------------------------------------------------------- the operator

def capctl(db_url: str, *args: str) -> None:
    """Run the real capctl in a subprocess, as the operator would, and show the command and its answer."""
    click.secho("$ capctl " + shlex.join(args), fg="cyan")
    environment = dict(os.environ, RLM_CAP_DB_URL=db_url, RLM_CAP_ACTOR=OPERATOR)
    result = subprocess.run([lab.CAPCTL, *args], env=environment, capture_output=True, text=True, timeout=60)
    answer = (result.stdout + result.stderr).rstrip()
    if answer:
        click.echo(textwrap.indent(answer, "  "))
    if result.returncode:
        raise DemoFailed(f"capctl {shlex.join(args)} failed")


def set_up(db_url: str, billing_day: int, coa_port: int) -> None:
    capctl(db_url, "db", "init")
    capctl(db_url, "plan", "add", "Home 10GB", "--limit", "10GB", "--action", "reduce", "--reduce-percent", "50",
           "--rate", "10M/20M", "--bonus", "5GB", "--time-frame", "00:00-04:00", "--rollover")
    capctl(db_url, "topup-plan", "add", "Home 10GB", "5GB", "--size", "5GB", "--price", "10")
    capctl(db_url, "plan", "edit", "Home 10GB", "--auto-topup-plan", "5GB")
    capctl(db_url, "notification", "add", "Home 10GB", "--source", "monthly", "--threshold", "80",
           "--channel", "email", "--subject", "80% of your data used", "--body", MAIL_BODY)
    capctl(db_url, "plan", "add", "Lite 5GB", "--limit", "5GB", "--action", "block", "--rate", "5M/5M")
    capctl(db_url, "nas", "add", MIKROTIK_IP, "--secret", lab.SECRET.decode(), "--name", "mikrotik1",
           "--coa-port", str(coa_port))
    for name, plan, extra in (("alice", "Home 10GB", ["--balance", "30"]), ("bob", "Lite 5GB", []),
                              ("carol", "Home 10GB", ["--balance", "30", "--auto-topup"]),
                              ("dave", "Home 10GB", [])):
        capctl(db_url, "customer", "add", name, "--email", f"{name}@example.net", "--billing-day", str(billing_day),
               *extra)
        capctl(db_url, "service", "add", f"{name}@isp", "--customer", name, "--plan", plan,
               "--description", "Home internet")


def choose_billing_day(today: datetime) -> int:
    """The billing day that puts today about three weeks into its period: the story's ten days fit before it."""
    return min(range(1, 29), key=lambda day: abs(today - period_at(today, UTC, day).start - timedelta(days=20)))


# --------------------------------------------------------------------------- the stack

@dataclass
class Stack:
    db_url: str
    mail: lab.MailSink
    mikrotik: lab.NasSimulator
    radius: lab.FreeRadius
    enforcer: lab.CapEnforcer
    nas: lab.Nas


def enforcer_config(db_url: str, smtp_port: int) -> str:
    # Short intervals: the story waits for each CoA and email (production: enforcer/config.py's defaults).
    return (f"[database]\nurl = {db_url}\n\n[enforcer]\nnode = demo\ncoa_interval = 0.1\nnotify_interval = 0.2\n\n"
            f"[smtp]\nhost = {lab.LOOPBACK}\nport = {smtp_port}\nsender = noc@isp.example\n")


def start_stack(directory: Path, db_url: str, billing_day: int, exits: contextlib.ExitStack) -> Stack:
    """Mail server and MikroTik first (the operator registers the MikroTik's CoA port), then the
    database, then FreeRADIUS and cap-enforcer, which need it. ``exits`` stops them in reverse."""
    mail = exits.enter_context(lab.MailSink())
    mikrotik = exits.enter_context(lab.NasSimulator())
    section("The operator prepares the database: two plans, the MikroTik, four customers")
    set_up(db_url, billing_day, mikrotik.port)
    radius = lab.FreeRadius(db_url, directory / "raddb", node="demo",
                            settings={"trust_event_timestamp": "yes"})
    exits.callback(radius.stop)
    radius.start()
    enforcer = lab.CapEnforcer(directory, enforcer_config(db_url, mail.port))
    exits.callback(enforcer.stop)
    enforcer.start()
    section("The stack, on 127.0.0.1")
    for part, where in (("mail server (keeps every message)", f"SMTP port {mail.port}"),
                        ("MikroTik (simulated)", f"CoA port {mikrotik.port}, NAS-IP-Address {MIKROTIK_IP}"),
                        ("FreeRADIUS with rlm_cap", f"auth port {radius.auth_port}, acct port {radius.acct_port}, "
                                                    f"pid {radius.pid}, journal mode"),
                        ("cap-enforcer", f"pid {enforcer.pid}, log {enforcer.log_file}")):
        click.echo(f"  {part:<34} {where}")
    return Stack(db_url, mail, mikrotik, radius, enforcer, lab.Nas(radius, address=MIKROTIK_IP))


# --------------------------------------------------------------------------- what arrives

class Arrivals:
    """What reached the MikroTik and the mail server, each shown once."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.requests_shown = self.mails_shown = 0

    def show(self) -> tuple[list[dict], list]:
        requests = self.stack.mikrotik.requests[self.requests_shown:]
        mails = self.stack.mail.messages[self.mails_shown:]
        self.requests_shown += len(requests)
        self.mails_shown += len(mails)
        for request in requests:
            attributes = request["attributes"]
            rate = attributes.get("Mikrotik-Rate-Limit")
            click.secho(f"{INDENT}MikroTik <- {PACKETS[request['code']]} for {attributes['User-Name'][0]} "
                        f"(session {attributes['Acct-Session-Id'][0]})"
                        + (f": Mikrotik-Rate-Limit = {rate[0]}" if rate else "")
                        + f", answered {PACKETS[request['answer']]}", fg="yellow")
        for mail in mails:
            click.secho(f"{INDENT}mail     <- to {mail['To']}: \"{mail['Subject']}\"", fg="magenta")
            body = mail.get_content().replace("\r\n", "\n").strip()
            click.echo(textwrap.fill(body, 100, initial_indent=INDENT + "           | ",
                                     subsequent_indent=INDENT + "           | "))
        return requests, mails


# --------------------------------------------------------------------------- the story

class Story:
    """The month's timeline: records go in through FreeRADIUS, outcomes are awaited and shown."""

    def __init__(self, stack: Stack, period: Period):
        self.stack, self.period = stack, period
        self.engine = store.make_engine(stack.db_url)
        self.arrivals = Arrivals(stack)

    def day(self, number: int, hour: int, minute: int = 0) -> datetime:
        return self.period.start + timedelta(days=number, hours=hour, minutes=minute)

    def applied(self, username: str, session: str, at: datetime) -> bool:
        """Whether rlm_cap's journal applier has put the session's record of ``at`` in the database."""
        with self.engine.begin() as conn:
            return any(row["acct_session_id"] == session and row["last_time"] >= at
                       for row in store.session_rows(conn, username))

    def outbox_done(self) -> bool:
        """Whether cap-enforcer has handled every action that is due (CoA, Disconnect, email)."""
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            return not any(a["status"] == "pending" and a["due_at"] <= now for a in store.list_actions(conn))

    def line(self, username: str, at: datetime, caption: str) -> None:
        """One timeline line: the service's data after ``at``, as a bar."""
        with self.engine.begin() as conn:
            service = store.find_service(conn, username)
            report = ledger.usage(conn, ledger.load_context(conn, service), at)
        used, size = report.evaluation.normal_used, report.evaluation.normal_size
        capped = service["cap_state"] == CAPPED
        over = report.period["overuse_bytes"] if capped else 0  # while capped: at the reduced rate, or refused
        bonus = report.evaluation.bonus_used
        click.echo(f"{at:%a %d %b %H:%M}  {username:<10} {caption:<32} {bar(used, size)} "
                   f"{format_size(used):>7} of {format_size(size):<6}"
                   + (f" +{format_size(over)} past it" if over else "")
                   + (f"  bonus {format_size(bonus)}" if bonus else "")
                   + f"  {service['cap_state']}")

    def outcome(self, coa: int = 0, mails: int = 0) -> None:
        """Wait until cap-enforcer is done, show what arrived, and check it is what the story says."""
        lab.wait_for(self.outbox_done, timeout=30, what="cap-enforcer to send what is due")
        requests, messages = self.arrivals.show()
        if (len(requests), len(messages)) != (coa, mails):
            raise DemoFailed(f"expected {coa} CoA/Disconnect and {mails} email(s), got {len(requests)} and "
                             f"{len(messages)}; see {self.stack.enforcer.log_file}")


class Subscriber:
    """One PPPoE session on the simulated MikroTik, with its running counters."""

    def __init__(self, story: Story, username: str, session: str, framed_ip: str):
        self.story, self.username, self.session, self.framed_ip = story, username, session, framed_ip
        self.started: datetime | None = None
        self.down = self.up = 0

    def send(self, status: str, at: datetime, **attributes) -> None:
        """One Accounting-Request stamped ``at``; returns once rlm_cap has applied it."""
        answered = self.story.stack.nas.accounting(
            status, self.session, self.username, down=self.down, up=self.up,
            session_time=int((at - self.started).total_seconds()), event_time=int(at.timestamp()),
            Framed_IP_Address=self.framed_ip, **attributes)
        if not answered:
            raise DemoFailed(f"FreeRADIUS did not answer the {status} of {self.username}")
        lab.wait_for(lambda: self.story.applied(self.username, self.session, at), timeout=30,
                     what=f"the {status} of {self.username} to be applied")

    def start(self, at: datetime) -> None:
        self.started = at
        self.send("Start", at)

    def use(self, begin: datetime, end: datetime, size: int, caption: str, coa: int = 0, mails: int = 0) -> None:
        """``size`` bytes (95 % download) between ``begin`` and ``end``: an Interim-Update at each end,
        as frequent interims would report it (the bonus time frame split uses the interval)."""
        self.send("Interim-Update", begin)
        self.down += size * 95 // 100
        self.up += size - size * 95 // 100
        self.send("Interim-Update", end)
        self.story.line(self.username, end, caption)
        self.story.outcome(coa, mails)

    def stop(self, at: datetime, cause: str) -> None:
        self.send("Stop", at, Acct_Terminate_Cause=cause)


def eighty_percent(story: Story, alice: Subscriber) -> None:
    section("80 %: alice streams past 80 % of her 10 GB; cap-enforcer emails her")
    alice.start(story.day(1, 19))
    alice.use(story.day(1, 19), story.day(1, 22), 3 * GB, "streams a series")
    alice.use(story.day(2, 19), story.day(2, 22), 3 * GB, "streams a series")
    alice.use(story.day(3, 19), story.day(3, 22), 3 * GB, "streams a series", mails=1)


def cap(story: Story, alice: Subscriber) -> None:
    section("CAP: alice runs out; a CoA halves her speed on the MikroTik (plan action: reduce 50 %)")
    alice.use(story.day(4, 19), story.day(4, 21), 2 * GB, "streams a film", coa=1)


def auto_topup(story: Story, carol: Subscriber) -> None:
    section("Auto top-up: carol runs out, and a 5 GB top-up is bought for her instead of the CAP")
    carol.start(story.day(5, 18))
    carol.use(story.day(5, 18), story.day(5, 23), 8500 * 10**6, "works from home", mails=1)
    carol.use(story.day(6, 19), story.day(6, 23), 2500 * 10**6, "works from home")
    capctl(story.stack.db_url, "customer", "show", "carol")


def block(story: Story, bob: Subscriber) -> None:
    section("Block: bob's plan blocks at the CAP; a Disconnect-Request ends his session")
    bob.start(story.day(7, 18))
    bob.use(story.day(7, 18), story.day(7, 22), 3 * GB, "plays online")
    bob.use(story.day(8, 19), story.day(8, 22), 2500 * 10**6, "plays online", coa=1)
    bob.stop(story.day(8, 22, 1), "Admin-Reset")
    click.echo(f"{story.day(8, 22, 1):%a %d %b %H:%M}  {bob.username:<10} the MikroTik ends the session "
               "(Accounting-Request Stop, Admin-Reset)")

    def rejected():
        reply = story.stack.nas.login(bob.username)
        return reply if reply.code == packet.AccessReject else None
    reply = lab.wait_for(rejected, timeout=10, what="an Access-Reject for bob")
    click.echo(f"{'':<16}  {bob.username:<10} redials: Access-Reject, Reply-Message "
               f"\"{reply['Reply-Message'][0]}\"")


def night_bonus(story: Story, dave: Subscriber) -> None:
    section("Night bonus: dave downloads between 00:00 and 04:00; it counts on his 5 GB bonus, not his 10 GB")
    dave.start(story.day(9, 20))
    dave.use(story.day(9, 20), story.day(9, 23), 2 * GB, "browses in the evening")
    dave.use(story.day(10, 1), story.day(10, 4), 3 * GB, "downloads games at night")
    capctl(story.stack.db_url, "usage", dave.username)


def operator_topup(story: Story, alice: Subscriber) -> None:
    section("Today: alice calls support; the operator adds a top-up and a CoA restores her speed")
    capctl(story.stack.db_url, "usage", alice.username)
    capctl(story.stack.db_url, "topup", "add", alice.username, "--plan", "5GB")
    story.line(alice.username, datetime.now(timezone.utc), "gets a 5 GB top-up (capctl)")
    story.outcome(coa=1)


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the live SQLite database (WAL included) while the stack writes to it."""
    with contextlib.closing(sqlite3.connect(source)) as live, contextlib.closing(sqlite3.connect(target)) as copy:
        live.backup(copy)


def month_close(story: Story, directory: Path, subscribers: list[Subscriber]) -> None:
    end = story.period.end
    section(f"Month close, {end:%a %d %b %H:%M}: unused monthly data rolls over, capped services are restored")
    copy = directory / "month-close.sqlite3"
    copy_database(directory / "demo.sqlite3", copy)
    note(f"That moment is still ahead. So cap-enforcer's period-close job (the one the running enforcer runs "
         f"every minute) runs here with now = {end:%d %b %H:%M} UTC, on a copy of the database ({copy}): "
         "the running stack stays in today.")
    engine = store.make_engine(f"sqlite:///{copy}")
    try:
        closed = Enforcer(engine, EnforcerConfig(node="month-close"), clock=lambda: end).close_periods()
        restored = show_new_period(engine, end, subscribers)
    finally:
        engine.dispose()
    note(f"{closed} services closed their month. The restore CoA for {', '.join(restored) or 'nobody'} is queued "
         f"for {end:%d %b %H:%M}; a session that has ended gets the normal rate at its next login.")
    capctl(story.stack.db_url, "--db", f"sqlite:///{copy}", "history", "dave@isp", "--all")


def show_new_period(engine, start: datetime, subscribers: list[Subscriber]) -> list[str]:
    """Each service's data at the new period's ``start``; returns the services whose restore is queued."""
    with engine.begin() as conn:
        for subscriber in subscribers:
            service = store.find_service(conn, subscriber.username)
            report = ledger.usage(conn, ledger.load_context(conn, service), start)
            buckets = sorted((b for b in report.buckets if b["remaining"]),
                             key=lambda b: BUCKET_KINDS.index(b["kind"]))
            available = ", ".join(f"{bucket['kind']} {format_size(bucket['remaining'])}" for bucket in buckets)
            click.echo(f"{start:%a %d %b %H:%M}  {subscriber.username:<10} {report.state:<6} available: {available}")
        return [store.find_service(conn, action["service_id"])["username"] for action in store.list_actions(conn)
                if action["kind"] == "restore" and action["due_at"] >= start]


# --------------------------------------------------------------------------- keep: explore, then stop

def explore(stack: Stack, story: Story, dave: Subscriber) -> None:
    """Keep the stack up for capctl; show what arrives until Ctrl-C or SIGTERM."""
    with story.engine.begin() as conn:
        alice = store.find_service(conn, "alice@isp")
        topup = max(b["id"] for b in store.bucket_rows(conn, alice["id"]) if b["kind"] == "topup")
    venv = Path(lab.CAPCTL).parent
    total = dave.down + 2 * GB  # counters are totals of the session: 2 GB more than the last interim
    interim = (f'User-Name = "{dave.username}"\\nAcct-Status-Type = Interim-Update\\nAcct-Session-Id = "{dave.session}"'
               f'\\nNAS-IP-Address = {MIKROTIK_IP}\\nAcct-Output-Octets = {total % 2**32}'
               f'\\nAcct-Output-Gigawords = {total >> 32}\\n')
    section(f"The stack keeps running; Ctrl-C here (or kill {os.getpid()}) stops all of it. Try in another shell:")
    for line in (f"export RLM_CAP_DB_URL={stack.db_url}",
                 f"{venv}/capctl usage alice@isp",
                 f"{venv}/capctl topup remove alice@isp {topup}    # alice is capped again: the CoA shows up here",
                 f"{venv}/capctl history alice@isp",
                 f"printf '{interim}' | radclient {lab.LOOPBACK}:{stack.radius.acct_port} acct {lab.SECRET.decode()}"
                 "    # dave downloads 2 GB more, now"):
        click.secho(f"  {line}", fg="cyan")
    note(f"cap-enforcer's log: {stack.enforcer.log_file}. What reaches the MikroTik and the mail server "
         "is shown here as it arrives.")
    try:
        while True:
            time.sleep(0.2)  # a display refresh, not a synchronisation
            story.arrivals.show()
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: the way to stop


@contextlib.contextmanager
def lab_failures():
    """A part of the lab that did not start or answer in time: one line, exit 1 (after everything stopped)."""
    try:
        yield
    except AssertionError as error:
        raise DemoFailed(str(error)) from None


@click.command()
@click.option("--dir", "directory", default="demo-data", show_default=True, type=click.Path(file_okay=False),
              help="where the database, FreeRADIUS's configuration and the logs go (emptied first)")
@click.option("--keep", is_flag=True, help="keep the stack running afterwards, for exploring with capctl")
def main(directory: str, keep: bool) -> None:
    """A month at a small ISP: FreeRADIUS, rlm_cap, cap-enforcer, a MikroTik and a mail server on loopback."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: everything we started
    path = Path(directory).resolve()
    if path.exists() and any(path.iterdir()) and not (path / "demo.sqlite3").exists():
        raise click.UsageError(f"{path} is not empty and holds no earlier demo: choose another --dir")
    shutil.rmtree(path, ignore_errors=True)  # an earlier demo's data: each run starts from scratch
    path.mkdir(parents=True)
    db_url = f"sqlite:///{path / 'demo.sqlite3'}"
    today = datetime.now(timezone.utc).replace(microsecond=0)
    billing_day = choose_billing_day(today)
    period = period_at(today, UTC, billing_day)
    click.secho("rlm_cap demo: a month at a small ISP, the whole stack on loopback, SQLite database", bold=True)
    with contextlib.ExitStack() as exits, lab_failures():
        stack = start_stack(path, db_url, billing_day, exits)
        story = Story(stack, period)
        exits.callback(story.engine.dispose)
        section(f"The month: {period.start:%d %b} - {period.end:%d %b} (billing day {billing_day}); "
                f"today is {today:%a %d %b %H:%M} UTC")
        note("The MikroTik stamps each Accounting-Request with Event-Timestamp, and this FreeRADIUS trusts it, "
             "as it may with NAS clocks on NTP: so the month so far plays in seconds, in order. Everything else "
             "runs on the real clock: cap-enforcer sends what is due now, the operator works today.")
        subscribers = [Subscriber(story, name, session, f"10.0.0.{11 + n}")
                       for n, (name, session) in enumerate(SESSIONS.items())]
        alice, bob, carol, dave = subscribers
        eighty_percent(story, alice)
        cap(story, alice)
        auto_topup(story, carol)
        block(story, bob)
        night_bonus(story, dave)
        operator_topup(story, alice)
        month_close(story, path, subscribers)
        if keep:
            explore(stack, story, dave)
        pids = f"FreeRADIUS pid {stack.radius.pid}, cap-enforcer pid {stack.enforcer.pid}"
    click.secho(f"\nStopped: {pids}, the MikroTik and the mail server. Data kept in {path}.", bold=True)


if __name__ == "__main__":
    main()
