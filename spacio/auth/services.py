"""Accounts and sessions: registration, login, token rotation, revocation, passwords."""

import hashlib
import time
import uuid
from datetime import datetime, timedelta, timezone

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
    session = AuthSession(id=uuid.uuid4(), user_id=user.id, refresh_jti=uuid.uuid4().hex,
                          expires_at=_refresh_expiry())
    tokens = _mint_tokens(user.id, session.id, session.refresh_jti, int(time.time()), fresh=True)
    db.session.add(session)
    db.session.commit()
    return tokens


def _refresh_expiry():
    return utcnow() + timedelta(seconds=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])


def _mint_tokens(user_id, session_id, refresh_jti, issued_at, *, fresh):
    """The access and the refresh token of one rotation of a session: the refresh token's id
    is ``refresh_jti`` (the one the session accepts next), both are issued at ``issued_at``
    (whole seconds since the epoch).

    Deterministic: the claims flask-jwt-extended would draw itself (the times, the ids) are
    given, and the signature is an HMAC, so the same arguments give the same tokens byte for
    byte. That is how a refresh replayed within the grace window answers the pair of the
    rotation it lost to without that pair being stored (``refresh``)."""
    cfg = current_app.config
    claims = {"sid": str(session_id), "iat": issued_at, "nbf": issued_at}
    # the access token's id only has to be unique: derived from the refresh token's
    access_jti = hashlib.sha256(f"access:{refresh_jti}".encode()).hexdigest()[:32]
    access = {**claims, "jti": access_jti, "exp": issued_at + int(cfg["JWT_ACCESS_TOKEN_EXPIRES"])}
    refresh = {**claims, "jti": refresh_jti, "exp": issued_at + int(cfg["JWT_REFRESH_TOKEN_EXPIRES"])}
    return {
        "access_token": create_access_token(str(user_id), fresh=fresh, additional_claims=access),
        "refresh_token": create_refresh_token(str(user_id), additional_claims=refresh),
        "token_type": "Bearer",
        "expires_in": int(cfg["JWT_ACCESS_TOKEN_EXPIRES"]),
    }


# every authenticated request runs it: built once, so SQLAlchemy also keeps its cache key
_SESSION_WITH_USER = (
    select(AuthSession.user_id, AuthSession.revoked_at, AuthSession.refresh_jti, AuthSession.previous_refresh_jti,
           AuthSession.refreshed_at, User)
    .join(User, User.id == AuthSession.user_id)
    .where(AuthSession.id == bindparam("sid"))
)


def session_user(payload):
    """The JWT blocklist check and the user lookup of an authenticated request, in one query
    (the session joined with its user): the user when the token's session is live and
    belongs to the token's subject, else None (the token counts as revoked). Nothing is
    cached: every request reads the session, so a logout or a password change holds from
    the next request on.

    A refresh token must also be the session's current one, or the one its last rotation
    spent presented again within the grace window (``refresh`` answers it). Any other older
    refresh token means it was copied: the session is revoked, so the thief and the victim
    both have to log in again."""
    try:
        sid = uuid.UUID(payload.get("sid"))
    except (TypeError, ValueError, AttributeError):  # missing, or not a UUID string
        return None
    row = db.session.execute(_SESSION_WITH_USER, {"sid": sid}).first()
    if row is None or row.revoked_at is not None or str(row.user_id) != payload.get("sub"):
        return None
    if (payload.get("type") == "refresh" and payload.get("jti") != row.refresh_jti
            and not _just_spent(row, payload)):
        _revoke_reused(sid, row.user_id)
        return None
    return row.User


def _just_spent(session, payload):
    """Whether the refresh token is the one the session's last rotation spent, presented
    again within the grace window."""
    grace = current_app.config["JWT_REFRESH_REUSE_GRACE_S"]
    return (grace > 0 and session.previous_refresh_jti is not None
            and payload.get("jti") == session.previous_refresh_jti
            and utcnow() - session.refreshed_at <= timedelta(seconds=grace))


def _revoke_reused(sid, user_id):
    db.session.execute(
        update(AuthSession)
        .where(AuthSession.id == sid, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason="refresh_reuse")
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    current_app.logger.warning("refresh token reuse: session %s of user %s revoked", sid, user_id)


def refresh(payload):
    """Rotate: a new access token and a new refresh token; the presented one is spent.

    The rotation is a compare-and-swap on the session row (an update conditional on the
    presented token still being the current one), so of two refreshes with one token exactly
    one rotates; on PostgreSQL the other waits for the first's row lock, then finds the token
    spent.

    A token spent by the session's last rotation and presented again within
    ``JWT_REFRESH_REUSE_GRACE_S`` of it (the other of two tabs refreshing at once, a retry
    whose answer was lost) is answered with the pair that rotation issued, not a third one,
    so every holder ends on the same rotation. Only the last rotation is answered: a token two
    rotations old, or one presented after the window, can only be a copy, and revokes the
    session (``session_user``). The window is what a copied token can still get: the pair its
    owner got, for seconds; 0 turns it off.

    Nothing is stored to answer a replay: the pair is minted again, identical, from what the
    session row holds anyway (its current refresh token's id and the rotation's time,
    ``refreshed_at``) and the signing key (``_mint_tokens``). A reader of the database learns
    token ids and a time, from which no token can be made without ``SPACIO_JWT_SECRET_KEY``,
    as before; a stored copy of the pair would have been a working token for them.
    """
    sid = uuid.UUID(payload["sid"])
    issued_at, jti = int(time.time()), uuid.uuid4().hex
    rotated = db.session.execute(
        update(AuthSession)
        .where(AuthSession.id == sid, AuthSession.refresh_jti == payload["jti"], AuthSession.revoked_at.is_(None))
        .values(refresh_jti=jti, previous_refresh_jti=payload["jti"], expires_at=_refresh_expiry(),
                refreshed_at=datetime.fromtimestamp(issued_at, timezone.utc))
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if rotated:
        db.session.commit()
        return _mint_tokens(payload["sub"], sid, jti, issued_at, fresh=False)
    # spent already: by a concurrent refresh (committed by now: its row lock was waited for),
    # or by an earlier one
    session = db.session.execute(
        select(AuthSession.user_id, AuthSession.revoked_at, AuthSession.refresh_jti,
               AuthSession.previous_refresh_jti, AuthSession.refreshed_at).where(AuthSession.id == sid)
    ).first()
    db.session.rollback()
    if session is None or session.revoked_at is not None:
        raise Unauthorized("This refresh token has already been used.", reason="token_revoked")
    if not _just_spent(session, payload):
        _revoke_reused(sid, session.user_id)
        raise Unauthorized("This refresh token has already been used.", reason="token_revoked")
    return _mint_tokens(payload["sub"], sid, session.refresh_jti, int(session.refreshed_at.timestamp()), fresh=False)


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
