"""`flask spacio ...` commands."""

import uuid

from sqlalchemy import func, select, update

from spacio.auth.models import AuthSession, PasswordReset
from spacio.db import utcnow
from spacio.extensions import db
from spacio.mail import OutboxMessage
from tests.conftest import assert_error


def count(app, model):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_outbox_prints_the_newest_mail_with_its_link(client, alice, space):
    client.post(f"/api/v1/spaces/{space['id']}/invites", json={"emails": ["bob@example.com"]},
                headers=alice.headers)
    result = client.app.test_cli_runner().invoke(args=["spacio", "outbox", "--to", "BOB@example.com", "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "to bob@example.com" in result.output and "/join?token=" in result.output


def test_cleanup_deletes_only_what_can_never_be_used_again(client, alice, bob):
    client.post("/api/v1/auth/logout", headers=bob.headers)  # revoked session
    client.login(alice.email)  # alice's second, live session
    client.post("/api/v1/auth/password-reset", json={"email": alice.email})  # live reset link
    app = client.app
    with app.app_context():  # an expired session of alice's, and an old outbox mail
        db.session.add(AuthSession(user_id=uuid.UUID(alice.id), refresh_jti="x", expires_at=utcnow()))
        db.session.execute(update(OutboxMessage).values(created_at=utcnow().replace(year=2000)))
        db.session.commit()
    sessions_before = count(app, AuthSession)

    result = app.test_cli_runner().invoke(args=["spacio", "cleanup"])

    assert result.exit_code == 0, result.output
    assert "sessions: 2 deleted" in result.output and "outbox: 1 deleted" in result.output
    assert count(app, AuthSession) == sessions_before - 2
    assert count(app, PasswordReset) == 1 and count(app, OutboxMessage) == 0
    # the live sessions still work, the revoked one still does not
    assert client.get("/api/v1/auth/me", headers=alice.headers).status_code == 200
    assert_error(client.get("/api/v1/auth/me", headers=bob.headers), 401, "token_revoked")

