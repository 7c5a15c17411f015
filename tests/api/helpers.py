"""Helpers shared by the API tests (fixtures live in conftest.py)."""

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy import event, func, select, text

from spacio.extensions import db

SPACES = "/api/v1/spaces"


def space_url(space_id, *rest):
    return "/".join([SPACES, *map(str, (space_id, *rest))])


def pagination_of(response):
    """The X-Pagination header, decoded."""
    assert "X-Pagination" in response.headers, dict(response.headers)
    return json.loads(response.headers["X-Pagination"])


def assert_pagination(response, *, total, total_pages, page, page_size):
    header = pagination_of(response)
    expected = {"total": total, "total_pages": total_pages, "page": page, "page_size": page_size}
    assert {key: header.get(key) for key in expected} == expected, header


def parse_timestamp(value):
    """An ISO-8601 timestamp in UTC (API.md: timestamps are UTC)."""
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def assert_recent(value, within=timedelta(minutes=1)):
    assert abs(parse_timestamp(value) - datetime.now(timezone.utc)) < within, value


def members_by_email(client, user, space_id):
    response = client.get(space_url(space_id, "members"), headers=user.headers)
    assert response.status_code == 200, response.json
    return {m["email"]: m for m in response.json}


def roles_in(client, user, space_id):
    return {email: m["role"] for email, m in members_by_email(client, user, space_id).items()}


def count_rows(app, model, **where):
    with app.app_context():
        statement = select(func.count()).select_from(model).filter_by(**where)
        return db.session.scalar(statement)


@contextmanager
def sql_statements(app):
    """The SQL statements the app's engine sends inside the block (SQLAlchemy's cursor
    executions: not a pool's pre-ping, nor the driver's BEGIN and ROLLBACK)."""
    with app.app_context():
        engine = db.engine
    sent = []

    def record(_connection, _cursor, statement, *_args):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def lock_waits(app):
    """Sessions of the test PostgreSQL database waiting for a lock."""
    with app.app_context(), db.engine.connect() as connection:
        return connection.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE datname = current_database() AND wait_event_type = 'Lock'"))


def hold_row(app, table, row_id):
    """A transaction that holds one row locked FOR UPDATE (close it to let go)."""
    with app.app_context():
        connection = db.engine.connect()
        connection.execute(text(f"SELECT 1 FROM {table} WHERE id = :id FOR UPDATE"), {"id": row_id})
        return connection
