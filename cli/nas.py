"""capctl nas: the RADIUS clients, in FreeRADIUS's own `nas` table, and where CoA goes."""

from __future__ import annotations

import ipaddress

import click

from rlm_cap import store

from .common import echo_json, text, transact


@click.group("nas")
def nas() -> None:
    """NAS routers: secret, CoA port and type for CoA/Disconnect."""


@nas.command("add")
@click.argument("address")
@click.option("--secret", required=True, help="the RADIUS shared secret (never printed)")
@click.option("--name", "shortname", type=text(32), help="short name")
@click.option("--type", "nas_type", type=text(30), default="mikrotik", show_default=True,
              help="decides the rate attribute of CoA (mikrotik: Mikrotik-Rate-Limit)")
@click.option("--coa-port", type=click.IntRange(1, 65535), default=3799, show_default=True,
              help="RouterOS listens on 1700 by default (/radius incoming set accept=yes port=1700)")
def nas_add(address: str, secret: str, shortname: str | None, nas_type: str, coa_port: int) -> None:
    """Add a NAS by its IP address (the NAS-IP-Address it sends).

    Example: capctl nas add 192.0.2.1 --secret s3cret --name core1 --coa-port 1700
    """
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise click.ClickException(f"{address!r} is not an IP address (the NAS's NAS-IP-Address)") from None
    if not secret:
        raise click.ClickException("--secret must not be empty")
    if len(secret) > 60:  # the nas table's column; the value itself is never printed
        raise click.ClickException(f"--secret must be at most 60 characters, not {len(secret)}")

    def work(conn):
        if store.find_nas(conn, address) is not None:
            raise click.ClickException(f"NAS {address} exists already")
        return store.add_nas(conn, address, secret, shortname, nas_type, coa_port)
    click.echo(f"NAS {address} added (id {transact(work)}), CoA to port {coa_port}")


@nas.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON (without secrets)")
def nas_list(as_json: bool) -> None:
    """List NAS entries (secrets are not shown).

    Example: capctl nas list
    """
    rows = [{k: v for k, v in r.items() if k != "secret"} for r in transact(store.list_nas)]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['nasname']:<16} {row['shortname'] or '-':<12} {row['type'] or '-':<10} "
                   f"CoA port {row['coa_port']}")


COMMANDS = (nas,)
