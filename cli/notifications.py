"""capctl notification: when subscribers are told about their data."""

from __future__ import annotations

import click

from rlm_cap import store, templates
from rlm_cap.policy import CHANNELS, NOTIFICATION_SOURCES, THRESHOLD_SOURCES

from .common import echo_json, plan_row, text, transact


def _sample() -> dict:
    """Values like the ones a notification is rendered with, to try a template on."""
    from enforcer.notify import notification_context

    from .settings import _sample as sample_row
    values = notification_context(sample_row(store.services), sample_row(store.customers), "plan", 1, 2)
    values["size"] = "1 GB"
    return values


@click.group("notification")
def notification() -> None:
    """Notification rules of a plan (email, SMS)."""


@notification.command("add")
@click.argument("plan_name", metavar="PLAN")
@click.option("--source", type=click.Choice(NOTIFICATION_SOURCES), required=True,
              help="monthly: the monthly limit; total: incl. top-ups; topup: top-ups only; "
                   "topup_action / auto_topup_action: when a top-up is applied")
@click.option("--threshold", type=click.IntRange(0, 100), default=0, help="percent used (threshold sources)")
@click.option("--channel", type=click.Choice(CHANNELS), default="email", show_default=True)
@click.option("--subject", type=text(200, empty=True), default="", help="email subject (Jinja2)")
@click.option("--body", help="message text (Jinja2: {{ customer.name }}, {{ service.description }}, ...)")
@click.option("--body-file", type=click.File("r"), help="read the message text from a file")
def notification_add(plan_name, source, threshold, channel, subject, body, body_file) -> None:
    """Add a notification rule.

    Example: capctl notification add "Home 10GB" --source monthly --threshold 80
    --subject "80% used" --body "Hello {{ customer.name }}, 80% of your data is used."
    """
    if body_file is not None:
        body = body_file.read()
    if not body:
        raise click.ClickException("a notification needs --body TEXT or --body-file FILE")
    if source in THRESHOLD_SOURCES and not threshold:
        raise click.ClickException(f"source {source} needs --threshold PERCENT (1-100)")
    if len(body.encode("utf-8", "surrogatepass")) > 65535:  # the column is a TEXT
        raise click.ClickException("the body must be at most 65535 bytes")
    sample = _sample()
    for template in (subject, body):
        try:
            templates.check(template)
            # Tried on sample values: what the sandbox refuses (__class__, _private, ...) is refused now,
            # not found by the enforcer at the first send.
            templates.check(template, **sample)
        except ValueError as error:
            raise click.ClickException(str(error)) from None

    def work(conn):
        return store.add_notification_rule(conn, plan_row(conn, plan_name)["id"], source, threshold,
                                           channel, subject, body)
    click.echo(f"notification #{transact(work)} added to {plan_name!r}")


@notification.command("list")
@click.argument("plan_name", metavar="PLAN")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def notification_list(plan_name: str, as_json: bool) -> None:
    """List a plan's notification rules.

    Example: capctl notification list "Home 10GB"
    """
    rows = transact(lambda conn: store.list_notification_rules(conn, plan_row(conn, plan_name)["id"]))
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        threshold = f" {row['threshold_percent']}%" if row["source"] in THRESHOLD_SOURCES else ""
        click.echo(f"#{row['id']:<4} {row['source']}{threshold} by {row['channel']}: {row['subject']}")


COMMANDS = (notification,)
