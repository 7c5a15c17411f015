"""Passwords (argon2id + zxcvbn strength) and opaque single-use tokens (stored as hashes)."""

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from zxcvbn import zxcvbn

from spacio.errors import Invalid

# zxcvbn refuses more than 72 characters (its cost grows quickly with length); a prefix
# that long already tells a strong password from a weak one
_STRENGTH_PREFIX = 72


def _hasher():
    """The argon2 hasher for the configured parameters, and a hash of a random password
    to verify against when the account does not exist (made once per parameter set)."""
    cfg = current_app.config
    params = (cfg["ARGON2_TIME_COST"], cfg["ARGON2_MEMORY_COST"], cfg["ARGON2_PARALLELISM"])
    cached = current_app.extensions.get("spacio.argon2")
    if cached is None or cached[0] != params:
        hasher = PasswordHasher(time_cost=params[0], memory_cost=params[1], parallelism=params[2])
        cached = (params, hasher, hasher.hash(secrets.token_hex(16)))
        current_app.extensions["spacio.argon2"] = cached
    return cached[1], cached[2]


def hash_password(password):
    return _hasher()[0].hash(password)


def verify_password(password_hash, password):
    """True when the password matches. ``password_hash=None`` still costs one hash, so
    an unknown email takes as long to reject as a wrong password."""
    hasher, dummy_hash = _hasher()
    if password_hash is None:
        _verify_quietly(hasher, dummy_hash, password)
        return False
    return _verify_quietly(hasher, password_hash, password)


def _verify_quietly(hasher, password_hash, password):
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash):
    return _hasher()[0].check_needs_rehash(password_hash)


def check_password_strength(password, *, field="password", user_inputs=()):
    """Raise 422 ``weak_password`` with advice unless the password is long and strong enough."""
    cfg = current_app.config
    problems = []
    if len(password) < cfg["PASSWORD_MIN_LENGTH"]:
        problems.append(f"Use at least {cfg['PASSWORD_MIN_LENGTH']} characters.")
    else:
        inputs = [part for value in user_inputs if value for part in _words(value)]
        result = zxcvbn(password[:_STRENGTH_PREFIX], user_inputs=inputs)
        if result["score"] < cfg["PASSWORD_MIN_SCORE"]:
            feedback = result["feedback"]
            problems.append(feedback.get("warning") or "This password is too easy to guess.")
            problems.extend(feedback.get("suggestions") or [])
    if problems:
        problems = [p for p in problems if p]
        raise Invalid("The password is too weak.", reason="weak_password", errors={field: problems})


def _words(value):
    value = value.lower()
    return [value, *value.replace("@", " ").replace(".", " ").split()]


def new_token():
    """An opaque URL-safe token with 256 bits of randomness."""
    return secrets.token_urlsafe(32)


def token_hash(token):
    """Tokens are random and long, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).hexdigest()


def mask(token):
    """What a log line may show of a token."""
    return token[:4] + "…" if token else ""
