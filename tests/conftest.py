"""Fixtures shared by every test.

- ``unit/``: no database, no services; runs once.
- ``api/`` and ``integration/``: the ``app`` fixture is parametrised over SQLite and
  PostgreSQL (the real server ``make test`` starts, found in SPACIO_TEST_DATABASE_URL),
  so every API test runs on both. Each backend is migrated once with the real
  migrations; each test gets a fresh app and empty tables.
"""

import os
import re
import sys

import pytest
from sqlalchemy import text

from spacio import create_app
from spacio.extensions import db, limiter

# behaviour, not KDF cost, is under test here (tests/unit checks the production parameters)
FAST_HASHING = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}
TEST_SECRET = "test-secret-" + "x" * 40
# the API tests are about the HTTP contract: a fast deterministic embedder; the vector store
# is the embedded default's on SQLite and pgvector on PostgreSQL (see make_app)
FAST_PIPELINE = {"EMBEDDER": "hashing"}
STRONG_PASSWORD = "lavender-Orbit-73-quietly"


def pytest_terminal_summary(terminalreporter):
    for module in ("tests.integration.test_schemathesis", "tests.integration.test_schemathesis_live"):
        fuzz = sys.modules.get(module)
        if fuzz is not None and fuzz.CASES:
            counts = ", ".join(f"{backend}: {n}" for backend, n in sorted(fuzz.CASES.items()))
            terminalreporter.write_line(f"schemathesis cases run ({counts})")


def postgres_url():
    url = os.environ.get("SPACIO_TEST_DATABASE_URL")
    if not url:
        pytest.fail("SPACIO_TEST_DATABASE_URL is not set: run the suite with `make test`, "
                    "which starts PostgreSQL and Redis for it.", pytrace=False)
    return url


def redis_url():
    url = os.environ.get("SPACIO_TEST_REDIS_URL")
    if not url:
        pytest.fail("SPACIO_TEST_REDIS_URL is not set: run the suite with `make test`.", pytrace=False)
    return url


@pytest.fixture(scope="session")
def instance_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("instance"))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database(request, tmp_path_factory, instance_path):
    """A migrated database: the URL of an SQLite file, or of the test PostgreSQL."""
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path_factory.mktemp("sqlite") / "spacio.db")
    else:
        url = postgres_url()
    app = create_app(SQLALCHEMY_DATABASE_URI=url, JWT_SECRET_KEY=TEST_SECRET, INSTANCE_PATH=instance_path)
    with app.app_context():
        from flask_migrate import downgrade, upgrade

        if request.param == "postgres":
            downgrade(revision="base")  # a previous run may have left tables behind
        upgrade()
        db.engine.dispose()
    return url


@pytest.fixture
def make_app(database, instance_path):
    """Build an app on the test database with extra config; tables are emptied after."""
    apps = []

    def make(**overrides):
        # The limiter is a module singleton that keeps "storage is down" from one app to the
        # next; a process in production has one app, the tests build many.
        limiter._storage_dead = False
        config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database, "JWT_SECRET_KEY": TEST_SECRET,
                  **FAST_HASHING, **FAST_PIPELINE, **overrides}
        app = create_app(config, INSTANCE_PATH=instance_path)
        apps.append(app)
        return app

    yield make
    from spacio.jobs import jobs

    for app in apps:
        jobs(app).stop()
    if apps:
        with apps[0].app_context():
            empty_tables()
        for app in apps:
            with app.app_context():
                db.engine.dispose()


def empty_tables():
    db.session.remove()
    with db.engine.begin() as connection:
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        if connection.dialect.name == "postgresql":
            connection.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f'DELETE FROM "{table}"'))


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return ApiClient(app.test_client())


class ApiClient:
    """The Flask test client plus the steps every test repeats (register, log in, ...)."""

    def __init__(self, flask_client):
        self.http = flask_client
        self.app = flask_client.application

    def __getattr__(self, name):
        return getattr(self.http, name)

    def register(self, email, name=None, password=STRONG_PASSWORD):
        response = self.http.post("/api/v1/auth/register",
                                  json={"email": email, "password": password, "name": name or email.split("@")[0]})
        assert response.status_code == 201, response.json
        return response.json

    def login(self, email, password=STRONG_PASSWORD):
        response = self.http.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.json
        return response.json

    def user(self, email, name=None, password=STRONG_PASSWORD):
        """Register and log in; returns a User with ``headers`` for authenticated calls."""
        account = self.register(email, name, password)
        tokens = self.login(email, password)
        return User(account["id"], account["email"], account["name"], password, tokens)

    def space(self, owner, name="Research", **body):
        response = self.http.post("/api/v1/spaces", json={"name": name, **body}, headers=owner.headers)
        assert response.status_code == 201, response.json
        return response.json

    def outbox(self, to):
        """The newest message the embedded mail backend kept for ``to``."""
        from sqlalchemy import select

        from spacio.mail import OutboxMessage

        with self.app.app_context():
            message = db.session.scalars(
                select(OutboxMessage).where(OutboxMessage.to == to.strip().lower()).order_by(OutboxMessage.created_at.desc())
            ).first()
            assert message is not None, f"no mail to {to}"
            return message.subject, message.body

    def invite(self, owner, space_id, email, role="viewer"):
        """Invite ``email``; returns the token from the mail it was sent."""
        response = self.http.post(f"/api/v1/spaces/{space_id}/invites",
                                  json={"emails": [email], "role": role}, headers=owner.headers)
        assert response.status_code == 201, response.json
        return token_in(self.outbox(email)[1], "join")

    def member(self, owner, space_id, user, role="viewer"):
        """Make ``user`` a member of the space through a real invite."""
        token = self.invite(owner, space_id, user.email, role)
        response = self.http.post("/api/v1/invites/accept", json={"token": token}, headers=user.headers)
        assert response.status_code == 200, response.json

    def upload(self, user, space_id, *files):
        """POST files (``(bytes, filename)`` pairs) to a space; returns the response."""
        import io

        return self.http.post(f"/api/v1/spaces/{space_id}/documents", headers=user.headers,
                              data={"files": [(io.BytesIO(data), name) for data, name in files]})

    def ingested(self):
        """Wait until the in-process worker has finished every queued document."""
        from spacio.jobs import jobs

        jobs(self.app).join()

    def document(self, user, space_id, data, filename, ready=True):
        """Upload one file and wait for its ingestion; returns the document as GET shows it."""
        response = self.upload(user, space_id, (data, filename))
        assert response.status_code == 202, response.json
        document = response.json["documents"][0]
        self.ingested()
        document = self.http.get(f"/api/v1/spaces/{space_id}/documents/{document['id']}", headers=user.headers).json
        if ready:
            assert document["status"] == "ready", document
        return document

    def chunks(self, user, space_id, document_id):
        """The chunk ids of a ready document, in order (read from the database)."""
        import uuid

        from sqlalchemy import select

        from spacio.documents.models import Chunk

        with self.app.app_context():
            return [str(i) for i in db.session.scalars(
                select(Chunk.id).where(Chunk.document_id == uuid.UUID(document_id)).order_by(Chunk.ordinal))]


class User:
    def __init__(self, id, email, name, password, tokens):
        self.id, self.email, self.name, self.password = id, email, name, password
        self.tokens = tokens

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    @property
    def refresh_headers(self):
        return {"Authorization": f"Bearer {self.tokens['refresh_token']}"}


def token_in(body, path):
    """The token of the ``<FRONTEND_URL>/<path>?token=...`` link in a mail body."""
    match = re.search(rf"https?://\S+/{path}\?token=([A-Za-z0-9_\-]+)", body)
    assert match, f"no /{path} link in mail:\n{body}"
    return match.group(1)


def assert_error(response, code, reason=None):
    """The one error body (API.md), with the given status and reason."""
    assert response.status_code == code, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    body = response.json
    assert set(body) == {"code", "status", "message", "reason", "errors"}, body
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", body["reason"]), body["reason"]
    assert isinstance(body["errors"], dict)
    if reason is not None:
        assert body["reason"] == reason, body
    return body


@pytest.fixture
def unused_port():
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
