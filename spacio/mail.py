"""Outgoing mail (invites, password resets), through a backend chosen by ``MAIL_URL``.

- empty: the embedded default; each message is stored in the ``outbox`` table (as a
  mailbox would keep it, in the caller's transaction) and logged with tokens masked.
  ``flask spacio outbox`` prints the latest messages.
- ``smtp://user:pass@host:port``: plain SMTP, upgraded with STARTTLS when offered.
- ``smtps://user:pass@host:port``: SMTP over TLS.
"""

import re
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app
from sqlalchemy import String, Text, delete
from sqlalchemy.orm import Mapped, mapped_column

from spacio.db import created_at, uuid_pk
from spacio.errors import Unavailable
from spacio.extensions import db
from spacio.security import mask

_TOKEN_IN_TEXT = re.compile(r"(token=)([A-Za-z0-9_\-]+)")


class OutboxMessage(db.Model):
    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = uuid_pk()
    to: Mapped[str] = mapped_column(String(254), nullable=False, index=True)
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at = created_at()


def mask_tokens(text):
    return _TOKEN_IN_TEXT.sub(lambda m: m.group(1) + mask(m.group(2)), text)


class OutboxMailer:
    def send(self, to, subject, body):
        db.session.add(OutboxMessage(to=to, subject=subject, body=body))
        current_app.logger.info("mail to %s: %s\n%s", to, subject, mask_tokens(body))


class SmtpMailer:
    def __init__(self, url, sender, timeout, ca_file=None):
        parts = urlsplit(url)
        self.tls = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.require_starttls = parse_qs(parts.query).get("starttls") == ["required"]
        self.sender = sender
        self.timeout = timeout
        self.ca_file = ca_file

    def send(self, to, subject, body):
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.sender.rsplit("@", 1)[-1].strip(">"))
        message.set_content(body)
        try:
            self._deliver(message)
        except (OSError, smtplib.SMTPException) as exc:
            current_app.logger.error("mail to %s failed: %s: %s", to, type(exc).__name__, exc)
            raise Unavailable("The mail could not be sent; try again later.", reason="mail_unavailable") from exc
        current_app.logger.info("mail to %s sent via %s:%s: %s", to, self.host, self.port, subject)

    def _deliver(self, message):
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.tls:
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with client:
            client.ehlo()
            if not self.tls and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif not self.tls and self.require_starttls:
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            if self.username:
                client.login(self.username, self.password or "")
            client.send_message(message)


def purge_outbox(older_than):
    """Delete outbox messages created before ``older_than``; returns how many."""
    deleted = db.session.execute(delete(OutboxMessage).where(OutboxMessage.created_at < older_than)).rowcount
    db.session.commit()
    return deleted


def init_app(app):
    url = app.config["MAIL_URL"]
    if not url:
        mailer = OutboxMailer()
    elif urlsplit(url).scheme in ("smtp", "smtps"):
        mailer = SmtpMailer(url, app.config["MAIL_FROM"], app.config["MAIL_TIMEOUT"], app.config["MAIL_TLS_CA_FILE"])
    else:
        raise RuntimeError(f"SPACIO_MAIL_URL: unsupported scheme in {urlsplit(url).scheme!r}; use smtp:// or smtps://")
    app.extensions["spacio.mailer"] = mailer


def send(to, subject, body):
    current_app.extensions["spacio.mailer"].send(to, subject, body)
