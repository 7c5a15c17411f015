"""Accounts and sessions: registration, login, token rotation, revocation, passwords."""

import uuid
from datetime import timedelta

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from spacio import mail, security
from spacio.auth.models import AuthSession, PasswordReset, User
from spacio.db import utcnow
from spacio.errors import Conflict, Gone, Invalid, NotFound, Unauthorized, Unavailable
from spacio.extensions import db


def user_by_email(email):
    return db.session.scalar(select(User).where(User.email == email))


def register(email, password, name):
    security.check_password_strength(password, user_inputs=(email, name))
    if user_by_email(email) is not None:
        raise Conflict("That email is already registered.", reason="email_taken")
    user = User(id=uuid.uuid4(), email=email, name=name, password_hash=security.hash_password(password))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # registered concurrently
        db.session.rollback()
        raise Conflict("That email is already registered.", reason="email_taken") from None
    return user


def login(email, password):
    user = user_by_email(email)
    if not security.verify_password(user.password_hash if user else None, password):
        raise Unauthorized("Wrong email or password.", reason="invalid_credentials")
    if security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    session = AuthSession(id=uuid.uuid4(), user_id=user.id, expires_at=_refresh_expiry())
    tokens, session.refresh_jti = _mint_tokens(user.id, session.id, fresh=True)
    db.session.add(session)
    db.session.commit()
    return tokens


def _refresh_expiry():
    return utcnow() + timedelta(seconds=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])


def _mint_tokens(user_id, session_id, *, fresh):
    """An access and a refresh token for the session, and the refresh token's id (which
    becomes the only refresh token the session accepts next)."""
    jti = uuid.uuid4().hex
    claims = {"sid": str(session_id)}
    tokens = {
        "access_token": create_access_token(str(user_id), fresh=fresh, additional_claims=claims),
        "refresh_token": create_refresh_token(str(user_id), additional_claims={**claims, "jti": jti}),
        "token_type": "Bearer",
        "expires_in": int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]),
    }
    return tokens, jti


# every authenticated request runs it: built once, so SQLAlchemy also keeps its cache key
_SESSION_WITH_USER = (
    select(AuthSession.user_id, AuthSession.revoked_at, AuthSession.refresh_jti, User)
    .join(User, User.id == AuthSession.user_id)
    .where(AuthSession.id == bindparam("sid"))
)


def session_user(payload):
    """The JWT blocklist check and the user lookup of an authenticated request, in one query
    (the session joined with its user): the user when the token's session is live and
    belongs to the token's subject, else None (the token counts as revoked). Nothing is
    cached: every request reads the session, so a logout or a password change holds from
    the next request on.

    A refresh token must also be the session's current one. An older refresh token means
    it was copied: the session is revoked, so the thief and the victim both have to log in
    again."""
    try:
        sid = uuid.UUID(payload.get("sid"))
    except (TypeError, ValueError, AttributeError):  # missing, or not a UUID string
        return None
    row = db.session.execute(_SESSION_WITH_USER, {"sid": sid}).first()
    if row is None or row.revoked_at is not None or str(row.user_id) != payload.get("sub"):
        return None
    if payload.get("type") == "refresh" and payload.get("jti") != row.refresh_jti:
        revoke_sessions(row.User, reason="refresh_reuse", only=sid)
        db.session.commit()
        current_app.logger.warning("refresh token reuse: session %s of user %s revoked", sid, row.user_id)
        return None
    return row.User


def refresh(payload):
    """Rotate: a new access token and a new refresh token; the presented one is spent.

    The update is conditional on the presented token still being current, so two
    concurrent refreshes with one token cannot both succeed.
    """
    sid = uuid.UUID(payload["sid"])
    tokens, jti = _mint_tokens(payload["sub"], sid, fresh=False)
    result = db.session.execute(
        update(AuthSession)
        .where(AuthSession.id == sid, AuthSession.refresh_jti == payload["jti"], AuthSession.revoked_at.is_(None))
        .values(refresh_jti=jti, expires_at=_refresh_expiry(), refreshed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise Unauthorized("This refresh token has already been used.", reason="token_revoked")
    db.session.commit()
    return tokens


def revoke_sessions(user, *, reason, keep=None, only=None):
    """Revoke one session (``only``), or all of the user's sessions except ``keep``."""
    statement = update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
    if only is not None:
        statement = statement.where(AuthSession.id == only)
    if keep is not None:
        statement = statement.where(AuthSession.id != keep)
    db.session.execute(
        statement.values(revoked_at=utcnow(), revoked_reason=reason).execution_options(synchronize_session=False)
    )


def logout(user, payload, *, everywhere):
    sid = uuid.UUID(payload["sid"])
    revoke_sessions(user, reason="logout", only=None if everywhere else sid)
    db.session.commit()


def rename(user, name):
    user.name = name
    db.session.commit()
    return user


def delete_account(user):
    from spacio.spaces.models import Space

    owned = db.session.scalar(select(Space.id).where(Space.owner_id == user.id).limit(1))
    if owned is not None:
        raise Conflict(
            "Transfer or delete the spaces you own before deleting your account.", reason="owns_spaces"
        )
    db.session.delete(user)
    db.session.commit()


def change_password(user, payload, current_password, new_password):
    if not security.verify_password(user.password_hash, current_password):
        raise Invalid(
            "The current password is wrong.",
            reason="wrong_password",
            errors={"current_password": ["The current password is wrong."]},
        )
    security.check_password_strength(new_password, field="new_password", user_inputs=(user.email, user.name))
    user.password_hash = security.hash_password(new_password)
    revoke_sessions(user, reason="password_changed", keep=uuid.UUID(payload["sid"]))
    db.session.commit()


def request_password_reset(email):
    """Mail a reset link if the account exists. The caller answers 202 either way."""
    user = user_by_email(email)
    if user is None:
        return
    cfg = current_app.config
    token = security.new_token()
    minutes = cfg["PASSWORD_RESET_EXPIRES_MINUTES"]
    db.session.add(
        PasswordReset(user_id=user.id, token_hash=security.token_hash(token),
                      expires_at=utcnow() + timedelta(minutes=minutes))
    )
    link = f"{cfg['FRONTEND_URL']}/reset?token={token}"
    try:
        mail.send(
            user.email,
            "Reset your Spacio password",
            f"Hello {user.name},\n\n"
            f"Someone asked to reset the password of your Spacio account. To choose a new one, open:\n\n"
            f"{link}\n\n"
            f"The link works once and expires in {minutes} minutes. "
            f"If you did not ask for this, ignore this mail; your password stays as it is.\n",
        )
    except Unavailable:
        db.session.rollback()  # logged by the mailer; the answer stays 202 (no account enumeration)
        return
    db.session.commit()


def confirm_password_reset(token, new_password):
    reset = db.session.scalar(select(PasswordReset).where(PasswordReset.token_hash == security.token_hash(token)))
    if reset is None:
        raise NotFound("This password reset link is not valid.", reason="reset_not_found")
    if reset.used_at is not None:
        raise Gone("This password reset link has already been used.", reason="reset_used")
    if reset.expires_at <= utcnow():
        raise Gone("This password reset link has expired; ask for a new one.", reason="reset_expired")
    user = db.session.get(User, reset.user_id)
    security.check_password_strength(new_password, field="new_password", user_inputs=(user.email, user.name))
    now = utcnow()
    claimed = db.session.execute(
        update(PasswordReset)
        .where(PasswordReset.id == reset.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # used concurrently
        db.session.rollback()
        raise Gone("This password reset link has already been used.", reason="reset_used")
    # every other outstanding link of this user dies with this one
    db.session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    user.password_hash = security.hash_password(new_password)
    revoke_sessions(user, reason="password_reset")
    db.session.commit()


def purge(now=None):
    """Delete what can never be used again: sessions that are revoked or past their expiry
    (their tokens already answer 401: a missing session counts as revoked) and reset links
    that are used or expired. Returns how many rows of each went."""
    now = now or utcnow()
    sessions = db.session.execute(
        delete(AuthSession).where(or_(AuthSession.revoked_at.is_not(None), AuthSession.expires_at <= now))
    ).rowcount
    resets = db.session.execute(
        delete(PasswordReset).where(or_(PasswordReset.used_at.is_not(None), PasswordReset.expires_at <= now))
    ).rowcount
    db.session.commit()
    return {"sessions": sessions, "password_resets": resets}
