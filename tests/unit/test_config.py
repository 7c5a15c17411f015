"""Configuration: defaults, then SPACIO_* env, then explicit config (tests/integration/test_deploy.py
checks that README documents every key)."""


import pytest
from flask import Flask

from spacio import config
from spacio.config import Defaults

SECRET = "s" * 40


def load(monkeypatch, tmp_path, env=None, explicit=None, **overrides):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    app = Flask("spacio", instance_path=str(tmp_path))
    config.load(app, explicit, overrides)
    return app.config


def test_env_overrides_defaults_and_explicit_config_overrides_env(monkeypatch, tmp_path):
    cfg = load(monkeypatch, tmp_path, env={"SPACIO_INVITE_EXPIRES_HOURS": "24", "SPACIO_MAIL_FROM": "ops@x.org",
                                           "SPACIO_RATELIMIT_ENABLED": "false"},
               explicit={"MAIL_FROM": "test@x.org"})
    assert cfg["INVITE_EXPIRES_HOURS"] == 24  # parsed as JSON
    assert cfg["RATELIMIT_ENABLED"] is False
    assert cfg["MAIL_FROM"] == "test@x.org"
    assert cfg["PASSWORD_MIN_LENGTH"] == Defaults.PASSWORD_MIN_LENGTH


def test_embedded_default_is_sqlite_in_the_instance_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("SPACIO_SQLALCHEMY_DATABASE_URI", raising=False)
    cfg = load(monkeypatch, tmp_path)
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/spacio.db"
    assert cfg["RATELIMIT_STORAGE_URI"] == "memory://"
    assert "pool_pre_ping" not in cfg["SQLALCHEMY_ENGINE_OPTIONS"]


@pytest.mark.parametrize("given", ["postgres://u:p@db:5432/app", "postgresql://u:p@db:5432/app"])
def test_paas_postgres_urls_use_psycopg3(monkeypatch, tmp_path, given):
    cfg = load(monkeypatch, tmp_path, SQLALCHEMY_DATABASE_URI=given, JWT_SECRET_KEY=SECRET)
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u:p@db:5432/app"
    assert "pool_pre_ping" not in cfg["SQLALCHEMY_ENGINE_OPTIONS"]  # spacio.db.connection_alive instead


def test_postgres_needs_an_explicit_jwt_secret(monkeypatch, tmp_path):
    monkeypatch.delenv("SPACIO_JWT_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="SPACIO_JWT_SECRET_KEY"):
        load(monkeypatch, tmp_path, SQLALCHEMY_DATABASE_URI="postgresql://db/app")


def test_short_jwt_secret_is_refused(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="32 characters"):
        load(monkeypatch, tmp_path, JWT_SECRET_KEY="short")


def test_redis_url_becomes_the_rate_limit_storage(monkeypatch, tmp_path):
    cfg = load(monkeypatch, tmp_path, REDIS_URL="redis://cache:6379/1")
    assert cfg["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/1"


def test_cors_origins(monkeypatch, tmp_path):
    assert load(monkeypatch, tmp_path, FRONTEND_URL="https://app.example.com/spacio/")["CORS_ORIGINS"] == [
        "https://app.example.com"]
    assert load(monkeypatch, tmp_path, CORS_ORIGINS="https://a.example, https://b.example/")["CORS_ORIGINS"] == [
        "https://a.example", "https://b.example"]
    assert load(monkeypatch, tmp_path, CORS_ORIGINS=["https://c.example"])["CORS_ORIGINS"] == ["https://c.example"]
