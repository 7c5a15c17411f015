"""A service going away mid-flight: 503 with the one error body, never a 500, and nothing
left half done (bench/faults.py restarts the real servers under load)."""

import threading

import pytest
from sqlalchemy import text

from spacio import create_app
from spacio.extensions import db
from tests.conftest import FAST_HASHING, FAST_PIPELINE, STRONG_PASSWORD, TEST_SECRET, ApiClient, assert_error, redis_url


def test_a_database_that_is_down_answers_503_not_500(instance_path, unused_port):
    app = create_app({"TESTING": True, "JWT_SECRET_KEY": TEST_SECRET, **FAST_HASHING, **FAST_PIPELINE,
                      "SQLALCHEMY_DATABASE_URI": f"postgresql://spacio@127.0.0.1:{unused_port}/spacio"},
                     INSTANCE_PATH=instance_path)
    client = app.test_client()
    for response in (client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x" * 12}),
                     client.post("/api/v1/auth/register", json={"email": "a@example.com", "name": "A",
                                                                "password": STRONG_PASSWORD})):
        assert_error(response, 503, "database_unavailable")
        assert response.headers["Retry-After"] == "2"
    assert client.get("/health").status_code == 200  # liveness needs no database


@pytest.fixture
def redis_down(make_app, unused_port):
    return ApiClient(make_app(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0").test_client())


def test_an_upload_while_the_queue_is_down_fails_the_document_with_a_reason(redis_down, make_app):
    alice = redis_down.user("alice@example.com")
    space = redis_down.space(alice)["id"]
    response = redis_down.upload(alice, space, (b"Queued while Redis was away.", "a.txt"))
    assert response.status_code == 202, response.json
    (document,) = response.json["documents"]
    assert document["status"] == "failed", "not `queued` forever for a message that was never sent"
    assert document["error"]["reason"] == "queue_unavailable"
    url = f"/api/v1/spaces/{space}/documents/{document['id']}"
    assert redis_down.get(url, headers=alice.headers).json["status"] == "failed"

    # reindexing while the queue is still down says so, and changes nothing
    assert_error(redis_down.post(f"{url}/reindex", headers=alice.headers), 503, "queue_unavailable")
    assert_error(redis_down.post(f"/api/v1/spaces/{space}/reindex", headers=alice.headers), 503,
                 "queue_unavailable")
    assert redis_down.get(url, headers=alice.headers).json["error"]["reason"] == "queue_unavailable"

    # Redis back: the kept file is queued again
    back = make_app(REDIS_URL=redis_url()).test_client()
    response = back.post(f"{url}/reindex", headers=alice.headers)
    assert response.status_code == 202, response.json
    assert response.json["status"] == "queued" and response.json["error"] is None


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_deadlock_the_database_breaks_is_a_conflict_to_retry_not_an_outage(make_app):
    """A request that PostgreSQL aborts to break a real deadlock (two advisory locks taken in
    opposite orders) gets 503 ``database_conflict`` with a short Retry-After, not a 500 and
    not "the database is unavailable". The request waits first, so PostgreSQL's deadlock check
    (after ``deadlock_timeout``) fires on its side."""
    app = make_app()
    other_has_2 = threading.Event()

    @app.get("/_test/deadlock")
    def deadlock():
        db.session.execute(text("SELECT pg_advisory_xact_lock(1)"))
        other_has_2.wait(10)
        db.session.execute(text("SELECT pg_advisory_xact_lock(2)"))
        return {}

    def other():
        with app.app_context(), db.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(2)"))
            other_has_2.set()
            try:
                connection.execute(text("SELECT pg_sleep(0.2), pg_advisory_xact_lock(1)"))
            except Exception:
                pass  # not the side PostgreSQL aborts
            connection.rollback()

    thread = threading.Thread(target=other)
    thread.start()
    response = app.test_client().get("/_test/deadlock")
    thread.join(10)
    assert_error(response, 503, "database_conflict")
    assert response.headers["Retry-After"] == "1"


def _pooled_backend_pid(app):
    """The server process behind the one connection the app's pool holds (given back after)."""
    with app.app_context():
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        db.session.remove()
    return pid


def _terminate(app, pid):
    """Have PostgreSQL end a backend, as a restart or an idle timeout does (from a connection
    of its own, not one of the pool's)."""
    import psycopg

    url = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()[0]


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_connection_the_server_closed_is_replaced_when_it_is_checked_out(make_app):
    """A pooled connection whose server process ended (a PostgreSQL restart, an idle timeout)
    is noticed when it is checked out, without a round trip (``spacio.db.connection_alive``),
    and the request gets a new connection: 200, not a 503 for the first request after."""
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0})
    api = ApiClient(app.test_client())
    alice = api.user("alice@example.com")
    assert api.get("/api/v1/spaces", headers=alice.headers).status_code == 200
    before = _pooled_backend_pid(app)
    _terminate(app, before)

    response = api.get("/api/v1/spaces", headers=alice.headers)
    assert response.status_code == 200, response.json
    assert _pooled_backend_pid(app) != before


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_live_idle_connection_passes_the_checkout_check_and_a_closed_one_fails(make_app):
    from spacio.db import connection_alive

    app = make_app()
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            connection = raw.dbapi_connection
            assert connection_alive(connection)
            connection.execute("SELECT 1")  # a transaction left open is not idle
            assert not connection_alive(connection)
            connection.rollback()
            assert connection_alive(connection)
            _terminate(app, connection.info.backend_pid)  # waits until the backend has exited
            assert not connection_alive(connection)
        finally:
            raw.invalidate()
