"""spacio.tokens: a token's signature is checked once per process, its expiry every time."""

import time

import jwt as pyjwt
import pytest
from flask import Flask
from flask_jwt_extended.exceptions import JWTDecodeError

from spacio.tokens import JWTManager

SECRET = "unit-secret-" + "z" * 40


@pytest.fixture
def manager():
    app = Flask("t")
    app.config.update(JWT_SECRET_KEY=SECRET)
    jwt = JWTManager(app, remembered=3)
    with app.app_context():
        yield jwt


def token(secret=SECRET, **claims):
    now = int(time.time())
    return pyjwt.encode({"sub": "u1", "iat": now, "nbf": now, "exp": now + 60, **claims}, secret,
                        algorithm="HS256")


def test_a_remembered_token_decodes_to_its_claims_and_callers_get_their_own_copy(manager):
    good = token(extra="x")
    first = manager._decode_jwt_from_config(good)
    first["sub"] = "changed by a caller"
    again = manager._decode_jwt_from_config(good)
    assert again["sub"] == "u1" and again["extra"] == "x" and again["type"] == "access"
    assert list(manager._verified) == [good]


def test_a_remembered_token_still_expires(manager):
    good = token(exp=int(time.time()) + 1)
    assert manager._decode_jwt_from_config(good)["sub"] == "u1"
    time.sleep(max(0.0, pyjwt.decode(good, options={"verify_signature": False})["exp"] - time.time()) + 0.05)
    with pytest.raises(pyjwt.ExpiredSignatureError):
        manager._decode_jwt_from_config(good)
    assert good not in manager._verified


def test_a_token_that_fails_is_not_remembered_and_fails_every_time(manager):
    good = token()
    manager._decode_jwt_from_config(good)
    forged = token(secret="another-" + "k" * 40)  # same claims, another key
    for _ in range(2):
        with pytest.raises(pyjwt.InvalidSignatureError):
            manager._decode_jwt_from_config(forged)
    header, payload, signature = good.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]  # one character of the signature
    with pytest.raises(pyjwt.InvalidSignatureError):
        manager._decode_jwt_from_config(f"{header}.{payload}.{flipped}")
    with pytest.raises(JWTDecodeError):
        manager._decode_jwt_from_config(pyjwt.encode({"exp": int(time.time()) + 60}, SECRET))  # no sub
    assert list(manager._verified) == [good]


def test_it_remembers_a_bounded_number_of_tokens_oldest_forgotten_first(manager):
    tokens = [token(n=n) for n in range(5)]
    for t in tokens:
        manager._decode_jwt_from_config(t)
    assert list(manager._verified) == tokens[2:]
    assert manager._decode_jwt_from_config(tokens[0])["n"] == 0  # verified again


def test_a_new_app_forgets_the_tokens_of_the_last(manager):
    manager._decode_jwt_from_config(token())
    other = Flask("other")
    other.config.update(JWT_SECRET_KEY="other-" + "q" * 40)
    manager.init_app(other)
    assert manager._verified == {}
