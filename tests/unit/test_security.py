"""Passwords, tokens and secrets, without a database: argon2id with the production
parameters, zxcvbn strength advice, token hashing and masking, the JWT secret."""

import hashlib
import os
import re
import stat
import time

import argon2
import pytest
from flask import Flask

from spacio import config, create_app, security
from spacio.config import Defaults
from spacio.errors import Invalid
from spacio.mail import mask_tokens
from tests.conftest import STRONG_PASSWORD

SECRET = "s" * 40


@pytest.fixture
def app():
    """A bare Flask app with the production defaults (argon2 cost included)."""
    app = Flask(__name__)
    app.config.from_object(Defaults)
    with app.app_context():
        yield app


# ---------------------------------------------------------------- argon2id


def test_password_hash_is_argon2id_with_the_production_parameters(app):
    password_hash = security.hash_password(STRONG_PASSWORD)
    params = argon2.extract_parameters(password_hash)
    assert params.type is argon2.Type.ID
    assert params.version == 19
    assert params.time_cost == Defaults.ARGON2_TIME_COST == 3
    assert params.memory_cost == Defaults.ARGON2_MEMORY_COST == 64 * 1024
    assert params.parallelism == Defaults.ARGON2_PARALLELISM == 4
    assert params.salt_len >= 16 and params.hash_len >= 32
    assert password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert STRONG_PASSWORD not in password_hash


def test_hashes_are_salted(app):
    assert security.hash_password(STRONG_PASSWORD) != security.hash_password(STRONG_PASSWORD)


def test_verify_password(app):
    password_hash = security.hash_password(STRONG_PASSWORD)
    assert security.verify_password(password_hash, STRONG_PASSWORD) is True
    assert security.verify_password(password_hash, STRONG_PASSWORD.upper()) is False
    assert security.verify_password(password_hash, "") is False


@pytest.mark.parametrize("stored", [None, "", "not-a-hash", "$argon2id$v=19$m=65536,t=3,p=4$garbage"])
def test_verify_password_rejects_missing_or_corrupt_hashes_without_raising(app, stored):
    assert security.verify_password(stored, STRONG_PASSWORD) is False


def test_unknown_account_costs_a_real_hash(app, monkeypatch):
    """verify_password(None, ...) still runs argon2 with the production parameters, so an
    unknown email takes as long to reject as a wrong password (no timing oracle)."""
    verified, hashed = [], []
    real_verify, real_hash = argon2.PasswordHasher.verify, argon2.PasswordHasher.hash

    def spy(self, password_hash, password):
        verified.append(argon2.extract_parameters(password_hash))
        return real_verify(self, password_hash, password)

    def spy_hash(self, password, **kwargs):
        hashed.append(password)
        return real_hash(self, password, **kwargs)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    monkeypatch.setattr(argon2.PasswordHasher, "hash", spy_hash)
    assert security.verify_password(None, STRONG_PASSWORD) is False
    assert security.verify_password(None, STRONG_PASSWORD) is False
    assert len(verified) == 2
    assert len(hashed) <= 1, "the stand-in hash is made once, not at every unknown email"
    assert all((p.type, p.time_cost, p.memory_cost, p.parallelism) == (argon2.Type.ID, 3, 64 * 1024, 4)
               for p in verified)


def test_needs_rehash_when_the_parameters_change(app):
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(STRONG_PASSWORD)
    assert security.needs_rehash(cheap) is True
    assert security.needs_rehash(security.hash_password(STRONG_PASSWORD)) is False
    # and the cheap hash still verifies, so login can upgrade it
    assert security.verify_password(cheap, STRONG_PASSWORD) is True


def test_hasher_follows_the_app_config(app):
    assert argon2.extract_parameters(security.hash_password(STRONG_PASSWORD)).time_cost == 3
    app.config.update(ARGON2_TIME_COST=1, ARGON2_MEMORY_COST=1024, ARGON2_PARALLELISM=1)
    params = argon2.extract_parameters(security.hash_password(STRONG_PASSWORD))
    assert (params.time_cost, params.memory_cost, params.parallelism) == (1, 1024, 1)


# ---------------------------------------------------------------- strength


def weakness(password, **kwargs):
    """The advice check_password_strength gives, as {field: [advice]}."""
    with pytest.raises(Invalid) as raised:
        security.check_password_strength(password, **kwargs)
    assert raised.value.code == 422
    assert raised.value.reason == "weak_password"
    return raised.value.errors


@pytest.mark.parametrize("password", [STRONG_PASSWORD, "Tr0ub4dor&3xyz", "quintessabarrowmere", "üüü-Ωmega-93-ßtraße"])
def test_strong_passwords_pass(app, password):
    assert security.check_password_strength(password) is None


def test_short_password_gets_the_length_advice(app):
    assert weakness("aB3$eF7") == {"password": ["Use at least 8 characters."]}


def test_min_length_comes_from_config(app):
    app.config["PASSWORD_MIN_LENGTH"] = 30
    assert weakness(STRONG_PASSWORD) == {"password": ["Use at least 30 characters."]}


@pytest.mark.parametrize("password", ["password123", "aaaaaaaaaaaa", "qwertyuiop", "12345678", "iloveyou2"])
def test_guessable_passwords_get_advice(app, password):
    errors = weakness(password)
    assert list(errors) == ["password"]
    advice = errors["password"]
    assert advice and all(isinstance(a, str) and a.strip() for a in advice)


def test_advice_is_reported_under_the_given_field(app):
    assert list(weakness("password123", field="new_password")) == ["new_password"]


def test_users_own_name_and_email_make_a_password_weak(app):
    assert security.check_password_strength("quintessabarrowmere") is None
    weakness("quintessabarrowmere", user_inputs=("q.barrowmere@example.com", "Quintessa Barrowmere"))
    weakness("quintessabarrowmere", user_inputs=("quintessa.barrowmere@example.com", None))


def test_min_score_comes_from_config(app):
    app.config["PASSWORD_MIN_SCORE"] = 0
    assert security.check_password_strength("password123") is None


def test_very_long_passwords_are_judged_quickly(app):
    start = time.perf_counter()
    security.check_password_strength(STRONG_PASSWORD * 400)  # 10 000 characters
    assert time.perf_counter() - start < 2


# ---------------------------------------------------------------- opaque tokens


def test_new_tokens_are_long_random_and_url_safe():
    tokens = {security.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_\-]{43,}", token)  # 32 bytes = 256 bits


def test_token_hash_is_sha256_hex():
    token = security.new_token()
    assert security.token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", security.token_hash(token))
    assert security.token_hash(token) == security.token_hash(token)
    assert security.token_hash(token) != security.token_hash(token + "x")
    assert token not in security.token_hash(token)


def test_mask_keeps_only_a_short_prefix():
    assert security.mask("abcdefghijkl") == "abcd…"
    assert security.mask("") == ""
    assert security.mask(None) == ""


def test_mask_tokens_hides_every_token_in_a_text():
    first, second = security.new_token(), security.new_token()
    text = (f"Open http://localhost:3000/reset?token={first}\n"
            f"or https://app.example.org/join?token={second}&x=1 soon.")
    masked = mask_tokens(text)
    assert first not in masked and second not in masked
    assert first[4:12] not in masked and second[4:12] not in masked
    assert f"http://localhost:3000/reset?token={first[:4]}…\n" in masked
    assert f"https://app.example.org/join?token={second[:4]}…&x=1 soon." in masked


def test_mask_tokens_leaves_other_text_alone():
    text = "Hello Alice,\n\nNo links here; tokens are not mentioned. a=b&c=d"
    assert mask_tokens(text) == text


# ---------------------------------------------------------------- the JWT secret


def test_instance_secret_is_created_once_with_mode_0600(tmp_path):
    instance = tmp_path / "instance"  # created on demand
    secret = config._instance_secret(str(instance))
    path = instance / "jwt-secret"
    assert len(secret) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == secret
    assert config._instance_secret(str(instance)) == secret  # reused, not regenerated
    assert os.listdir(instance) == ["jwt-secret"]  # no temporary file left behind


def test_instance_secret_differs_per_instance(tmp_path):
    assert config._instance_secret(str(tmp_path / "a")) != config._instance_secret(str(tmp_path / "b"))


def test_an_existing_instance_secret_is_read_as_is(tmp_path):
    (tmp_path / "jwt-secret").write_text("k" * 48 + "\n")
    assert config._instance_secret(str(tmp_path)) == "k" * 48


@pytest.fixture
def no_secret_env(monkeypatch):
    monkeypatch.delenv("SPACIO_JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("SPACIO_SQLALCHEMY_DATABASE_URI", raising=False)


@pytest.mark.parametrize("uri", ["postgresql+psycopg://u:p@db.invalid:5432/spacio", "postgres://u@db.invalid/spacio"])
def test_create_app_refuses_a_server_database_without_a_jwt_secret(no_secret_env, tmp_path, uri):
    with pytest.raises(RuntimeError, match="SPACIO_JWT_SECRET_KEY"):
        create_app(SQLALCHEMY_DATABASE_URI=uri, INSTANCE_PATH=str(tmp_path))
    assert not (tmp_path / "jwt-secret").exists()  # no per-process secret was made up


def test_create_app_accepts_a_server_database_with_a_jwt_secret(no_secret_env, tmp_path):
    app = create_app(SQLALCHEMY_DATABASE_URI="postgresql+psycopg://u@db.invalid/spacio", JWT_SECRET_KEY=SECRET,
                     INSTANCE_PATH=str(tmp_path))
    assert app.config["JWT_SECRET_KEY"] == SECRET


def test_create_app_on_sqlite_shares_the_instance_secret(no_secret_env, tmp_path):
    first = create_app(INSTANCE_PATH=str(tmp_path))
    second = create_app(INSTANCE_PATH=str(tmp_path))
    secret = (tmp_path / "jwt-secret").read_text().strip()
    assert first.config["JWT_SECRET_KEY"] == second.config["JWT_SECRET_KEY"] == secret
    assert first.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")


def test_create_app_refuses_a_short_jwt_secret(no_secret_env, tmp_path):
    with pytest.raises(RuntimeError, match="32 characters"):
        create_app(JWT_SECRET_KEY="too-short", INSTANCE_PATH=str(tmp_path))
