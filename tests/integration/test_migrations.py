"""The migrations create everything, on SQLite and PostgreSQL, and agree with the models."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from spacio.db import include_in_migrations
from spacio.extensions import db
from tests.conftest import TEST_SECRET, postgres_url

ROOT = Path(__file__).resolve().parents[2]


def test_models_and_migrations_agree(make_app):
    """Autogenerate against the migrated database finds nothing to do."""
    app = make_app()
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                               "include_name": include_in_migrations})
        assert compare_metadata(context, db.metadata) == []
        assert set(inspect(connection).get_table_names()) >= {t.name for t in db.metadata.sorted_tables}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    admin = postgres_url().replace("postgresql+psycopg://", "postgresql://")
    name = f"spacio_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url().rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def flask_db(url, *args):
    env = {**os.environ, "SPACIO_SQLALCHEMY_DATABASE_URI": url, "SPACIO_JWT_SECRET_KEY": TEST_SECRET}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_flask_db_upgrade_downgrade_upgrade_on_an_empty_database(empty_database):
    flask_db(empty_database, "upgrade")
    assert "No new upgrade operations detected" in flask_db(empty_database, "check")
    flask_db(empty_database, "downgrade", "base")
    flask_db(empty_database, "upgrade")
    assert "(head)" in flask_db(empty_database, "current")
