import email
import email.policy
import socket
import ssl
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Mailbox:
    """What a real SMTP server on loopback received."""

    def __init__(self):
        self.messages = []
        self.starttls_used = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        with self._arrived:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.starttls_used.append(session.ssl is not None)
            self._arrived.notify_all()
        return "250 OK"

    def last_to(self, address):
        for message in reversed(self.messages):
            if message["To"] == address:
                return message
        raise AssertionError(f"no mail to {address}; got {[m['To'] for m in self.messages]}")

    @staticmethod
    def body(message):
        return message.get_content()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Auth:
    def __init__(self, username, password):
        self.expected = (username.encode(), password.encode())

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == self.expected
        return AuthResult(success=ok)


@pytest.fixture
def smtp_server():
    """A plain SMTP server (no TLS offered); yields (mailbox, port)."""
    mailbox, port = Mailbox(), _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def starttls_server(tmp_path):
    """An SMTP server that offers STARTTLS with a test CA and requires login;
    yields (mailbox, port, ca_file)."""
    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    mailbox, port = Mailbox(), _free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=server_context, require_starttls=True,
        authenticator=_Auth("mailer", "p@ss word"), auth_require_tls=True,
    )
    controller.start()
    yield mailbox, port, str(ca_file)
    controller.stop()
