"""API keys: created for one space and a role, shown once, stored as a hash, revocable.

A key acts as its creator inside its one space with the lesser of the key's role and the
creator's current role there (``spacio.spaces.services.access`` applies it); every other
space answers 404 as for a non-member, and routes outside a space answer 403."""

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app, g
from sqlalchemy import func, or_, select, update

from spacio.apikeys.models import ApiKey
from spacio.auth.models import User
from spacio.db import utcnow
from spacio.errors import Conflict, Forbidden, NotFound, SpacioError
from spacio.extensions import db
from spacio.spaces import services as spaces

PREFIX = "spk_"
# spk_<key id: 32 hex digits>_<secret: 43 URL-safe base64 characters = 256 bits>
_KEY = re.compile(r"spk_([0-9a-f]{32})_([A-Za-z0-9_\-]{43})")
_LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key


class KeyUnauthorized(SpacioError):
    code = 401
    reason = "api_key_invalid"
    message = "The API key is not valid (malformed, unknown or revoked)."

    def __init__(self):
        super().__init__(headers={"WWW-Authenticate": 'ApiKey realm="X-API-Key"'})


@dataclass(frozen=True)
class KeyScope:
    """What a request with an API key may reach (kept in ``g.api_key``; no ORM state)."""

    id: uuid.UUID
    user_id: uuid.UUID
    space_id: uuid.UUID
    role: str


def _hash(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def create(user, name, space_id, role):
    space = spaces.access(user, space_id)  # not a member: 404 space_not_found
    if spaces.outranks(role, space.role):
        raise Forbidden(f"A key can have at most your own role in this space ({space.role}).",
                        reason="role_too_high")
    most = current_app.config["API_KEYS_MAX_PER_USER"]
    if db.session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user.id)) >= most:
        raise Conflict(f"You have {most} API keys, the most allowed; revoke one first.", reason="too_many_api_keys")
    secret = secrets.token_urlsafe(32)
    key = ApiKey(id=uuid.uuid4(), user_id=user.id, space_id=space.id, name=name, role=role,
                 secret_hash=_hash(secret))
    db.session.add(key)
    db.session.commit()
    key.key = f"{PREFIX}{key.id.hex}_{secret}"  # shown in this response only
    return key


def keys_of(user):
    return select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at.desc(), ApiKey.id)


def revoke(user, key_id):
    key = db.session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id:
        raise NotFound("API key not found.", reason="api_key_not_found")
    db.session.delete(key)
    db.session.commit()


def authenticate(text, allowed):
    """Check an ``X-API-Key`` value: 401 unless it is a live key, 403 when the route does not
    take keys (``allowed`` false). Sets ``g.api_key`` and returns ``(user, KeyScope)``."""
    match = _KEY.fullmatch(text.strip())
    if match is None:
        raise KeyUnauthorized()
    row = db.session.execute(
        select(ApiKey.id, ApiKey.space_id, ApiKey.role, ApiKey.secret_hash, ApiKey.last_used_at, User)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.id == uuid.UUID(match.group(1)))
    ).first()
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(match.group(2))):
        raise KeyUnauthorized()
    if not allowed:
        raise Forbidden("API keys cannot be used here: log in as the user.", reason="api_key_not_allowed")
    scope = KeyScope(id=row.id, user_id=row.User.id, space_id=row.space_id, role=row.role)
    g.api_key = scope
    _touch(row.id, row.last_used_at)
    return row.User, scope


def _touch(key_id, last_used_at):
    """Record the use, at most once a minute per key, on a connection of its own (the
    request's session and its objects are left alone)."""
    now = utcnow()
    if last_used_at is not None and now - last_used_at < _LAST_USED_EVERY:
        return
    with db.engine.begin() as connection:
        connection.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id,
                   or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - _LAST_USED_EVERY))
            .values(last_used_at=now)
        )
