"""``flask spacio ...`` commands."""

import click
from flask.cli import AppGroup
from sqlalchemy import select

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
