"""The one error body, and the domain errors services raise.

Every error the API returns has this shape (API.md)::

    {"code": 409, "status": "Conflict", "message": "...", "reason": "email_taken", "errors": {}}

``code``/``status`` are the HTTP status, ``reason`` a stable snake_case identifier a
frontend can switch on, ``message`` a sentence for humans, ``errors`` per-field
details (validation) or ``{}``.
"""

import logging
from http import HTTPStatus

import marshmallow as ma
from flask import jsonify

# reason for an HTTP error that carries none of its own
DEFAULT_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "plugin_error",
    503: "service_unavailable",
}

DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    404: "Nothing was found at this address.",
    405: "This method is not allowed here.",
    413: "The request body is too large.",
    415: "The request body has an unsupported media type.",
    422: "The request is invalid; see errors for details.",
    429: "Too many requests; retry later.",
    500: "An unexpected error occurred. It has been logged.",
}


class ErrorSchema(ma.Schema):
    """The one error body (documentation only: handlers build plain dicts)."""

    code = ma.fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = ma.fields.String(required=True, metadata={"description": "HTTP status phrase"})
    message = ma.fields.String(required=True, metadata={"description": "Human-readable explanation"})
    reason = ma.fields.String(required=True, metadata={"description": "Stable snake_case error identifier"})
    errors = ma.fields.Dict(required=True, metadata={"description": "Per-field details, or {}"})


def error_body(code, reason=None, message=None, errors=None):
    return {
        "code": code,
        "status": HTTPStatus(code).phrase,
        "message": message or DEFAULT_MESSAGES.get(code) or HTTPStatus(code).description or HTTPStatus(code).phrase,
        "reason": reason or DEFAULT_REASONS.get(code, "error"),
        "errors": errors or {},
    }


class SpacioError(Exception):
    """A domain error: services raise it, the app turns it into the one error body."""

    code = 400
    reason = "bad_request"
    message = None

    def __init__(self, message=None, *, reason=None, errors=None, headers=None):
        super().__init__(message or self.message or reason or self.reason)
        self.message = message or self.message
        self.reason = reason or self.reason
        self.errors = errors or {}
        self.headers = headers or {}

    def to_response(self):
        return error_body(self.code, self.reason, self.message, self.errors), self.code, self.headers


class Invalid(SpacioError):
    code = 422
    reason = "validation_error"


class Unauthorized(SpacioError):
    code = 401
    reason = "unauthorized"


class Forbidden(SpacioError):
    code = 403
    reason = "forbidden"
    message = "You do not have permission to do this."


class NotFound(SpacioError):
    code = 404
    reason = "not_found"


class Conflict(SpacioError):
    code = 409
    reason = "conflict"


class Gone(SpacioError):
    code = 410
    reason = "gone"


class UnsupportedMediaType(SpacioError):
    code = 415
    reason = "unsupported_media_type"


class Unavailable(SpacioError):
    code = 503
    reason = "service_unavailable"


class PluginFailed(SpacioError):
    """A plugin failed in a way a retry will not fix (API.md: 502 ``plugin_error``)."""

    code = 502
    reason = "plugin_error"


def handle_spacio_error(error):
    return error.to_response()


def handle_pool_timeout(error):
    """Every pooled database connection stayed busy for ``pool_timeout``: the server is
    overloaded, not broken. 503 with Retry-After, so a client backs off instead of seeing a 500."""
    return Unavailable("The server is busy; retry in a moment.", reason="database_busy",
                       headers={"Retry-After": "1"}).to_response()


def handle_database_unavailable(error):
    """The database cannot be reached (a restart, a failover, SQLite locked past its busy
    timeout): 503 with Retry-After, fast, never a 500; once it is back, the pool replaces the
    dead connections as they are checked out (``spacio.db.connection_alive``). PostgreSQL
    aborting this transaction for another one's sake (a deadlock, a serialization failure) is
    a conflict to retry, and is named as one."""
    if (getattr(getattr(error, "orig", None), "sqlstate", None) or "").startswith("40"):  # class 40
        logging.getLogger("spacio.db").error("transaction aborted: %s", error.orig.__class__.__name__,
                                             exc_info=error)
        return Unavailable("A concurrent change got in the way; retry.", reason="database_conflict",
                           headers={"Retry-After": "1"}).to_response()
    logging.getLogger("spacio.db").warning("database unavailable: %s", error.__class__.__name__,
                                           exc_info=error)
    return Unavailable("The database is unavailable; retry in a moment.", reason="database_unavailable",
                       headers={"Retry-After": "2"}).to_response()


def http_exception_response(error):
    """Render any werkzeug HTTPException (smorest/webargs aborts included) as the one body."""
    code = error.code or 500
    data = getattr(error, "data", None) or {}
    reason = data.get("reason")
    message = data.get("message")
    errors = data.get("errors") or data.get("messages") or {}
    if code == 422 and errors:
        errors = _flatten_locations(errors)
    if code == 400 and "json" in errors:  # webargs: the body did not parse
        reason, message, errors = "invalid_json", "The request body is not valid JSON.", {}
    if code == 500:
        # never echo an exception's text: it may hold internals
        message, errors = None, {}
    elif not message and code not in DEFAULT_MESSAGES:
        message = error.description
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    headers.update(data.get("headers") or {})
    if code == 429:
        limit = getattr(error, "limit", None)
        message = f"Too many requests (limit: {limit.limit}); retry later." if limit else message
    return error_body(code, reason, message, errors), code, headers


def _flatten_locations(errors):
    """webargs nests validation errors by location ({"json": {"email": [...]}}); the API
    reports them per field."""
    locations = {"json", "query", "querystring", "form", "files", "headers", "view_args", "path"}
    if not isinstance(errors, dict) or not set(errors) <= locations:
        return errors
    flat = {}
    for per_field in errors.values():
        if isinstance(per_field, dict):
            flat.update(per_field)
    return flat


def init_jwt_errors(jwt):
    """Every flask-jwt-extended failure answers 401 with the one error body (its own
    default is ``{"msg": ...}``, and 422 for a malformed token)."""

    def reply(reason, message):
        response = jsonify(error_body(401, reason, message))
        response.status_code = 401
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    jwt.unauthorized_loader(lambda _msg: reply("token_missing", "Log in first: send 'Authorization: Bearer <token>'."))
    jwt.invalid_token_loader(lambda _msg: reply("token_invalid", "The token is not valid."))
    jwt.expired_token_loader(lambda _h, _p: reply("token_expired", "The token has expired; refresh it or log in again."))
    jwt.revoked_token_loader(lambda _h, _p: reply("token_revoked", "The token has been revoked; log in again."))
    jwt.needs_fresh_token_loader(lambda _h, _p: reply("fresh_token_required", "Log in again to do this."))
    jwt.user_lookup_error_loader(lambda _h, _p: reply("token_invalid", "The account of this token no longer exists."))
    jwt.token_verification_failed_loader(lambda _h, _p: reply("token_invalid", "The token is not valid."))
