"""Who is calling: a user with a JWT, or a user's API key (``spacio.apikeys``).

``principal()`` is the one place other code (rate limits, logs) asks; ``api_key()`` is the
key's scope when the request came with ``X-API-Key``, else None."""

from flask import g


def api_key():
    """The ``spacio.apikeys.services.KeyScope`` of this request's API key, or None."""
    return g.get("api_key")


def principal():
    """``apikey:<id>`` for a request with an API key, ``user:<id>`` for one with a JWT,
    None before authentication (or on an anonymous route)."""
    key = g.get("api_key")
    if key is not None:
        return f"apikey:{key.id}"
    payload = g.get("_jwt_extended_jwt")  # set by flask-jwt-extended once the token is verified
    subject = payload.get("sub") if payload else None
    return f"user:{subject}" if subject else None
