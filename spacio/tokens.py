"""flask-jwt-extended's JWTManager, with each token's signature checked once per process.

Every authenticated request decodes its access token: flask-jwt-extended parses it three
times (the claims unverified, the header, then the claims with the HMAC and the registered
claims checked). A token's signature, algorithm, issuer, audience and the claims it carries
are fixed by its bytes and the key, so ``JWTManager`` remembers the verified claims of the
tokens it has seen (a bounded number, the oldest forgotten first) and only checks what
changes with time, the expiry, on every request; revocation is the session lookup's
(``spacio.auth.services.session_user``), which is never cached. A token that fails
verification is not remembered, so it fails every time.
"""

import re
import threading
import time

import flask_jwt_extended
from flask_jwt_extended.config import config


REMEMBERED_TOKENS = 4096
_BEARER = re.compile(r"^\s*bearer(?=\s)", re.IGNORECASE)


def normalize_bearer_scheme(environ):
    """HTTP's authentication schemes are case-insensitive (RFC 9110, 11.1): ``bearer <token>``
    is ``Bearer <token>``. flask-jwt-extended compares the scheme exactly and answered 401,
    so the header is rewritten in the WSGI environ before it reads it."""
    header = environ.get("HTTP_AUTHORIZATION")
    if header and not header.startswith("Bearer "):
        environ["HTTP_AUTHORIZATION"] = _BEARER.sub("Bearer", header, count=1)


class JWTManager(flask_jwt_extended.JWTManager):
    def __init__(self, app=None, add_context_processor=False, remembered=REMEMBERED_TOKENS):
        self._verified: dict[str, dict] = {}
        self._remembered = remembered
        self._lock = threading.Lock()
        super().__init__(app, add_context_processor)

    def init_app(self, app, add_context_processor=False):
        self._verified.clear()  # another app may sign with another key
        super().init_app(app, add_context_processor)

    def _decode_jwt_from_config(self, encoded_token, csrf_value=None, allow_expired=False):
        if csrf_value or allow_expired:  # not how Spacio's tokens are read: the library's own path
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        claims = self._verified.get(encoded_token)
        if claims is None:
            claims = super()._decode_jwt_from_config(encoded_token)  # raises for a bad token
            with self._lock:
                if len(self._verified) >= self._remembered:
                    del self._verified[next(iter(self._verified))]
                self._verified[encoded_token] = claims
        elif "exp" in claims and time.time() > claims["exp"] + config.leeway:
            with self._lock:
                self._verified.pop(encoded_token, None)
            # the library's own error (and its jwt_data), as for a token never seen before
            return super()._decode_jwt_from_config(encoded_token)
        return dict(claims)
