"""``flask spacio ...`` commands."""

from datetime import timedelta

import click
from flask.cli import AppGroup
from sqlalchemy import select

from spacio import mail
from spacio.auth import services as auth
from spacio.db import utcnow
from spacio.extensions import db
from spacio.mail import OutboxMessage

spacio_cli = AppGroup("spacio", help="Spacio administration.")


@spacio_cli.command("outbox")
@click.option("--to", "to", help="Only mail to this address.")
@click.option("-n", "limit", default=5, show_default=True, help="How many messages, newest first.")
def outbox(to, limit):
    """Print mail the embedded default kept in its outbox (invite and reset links)."""
    statement = select(OutboxMessage).order_by(OutboxMessage.created_at.desc()).limit(limit)
    if to:
        statement = statement.where(OutboxMessage.to == to.strip().lower())
    for message in db.session.scalars(statement):
        click.echo(f"--- {message.created_at.isoformat()} to {message.to}\nSubject: {message.subject}\n\n{message.body}")


@spacio_cli.command("cleanup")
@click.option("--outbox-days", default=30, show_default=True, help="Keep outbox mail this many days.")
def cleanup(outbox_days):
    """Delete dead sessions, spent reset links and old outbox mail (safe to run any time,
    e.g. daily from a scheduler)."""
    counts = auth.purge()
    counts["outbox"] = mail.purge_outbox(utcnow() - timedelta(days=outbox_days))
    click.echo(", ".join(f"{name}: {n} deleted" for name, n in counts.items()))
