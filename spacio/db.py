"""Column types and helpers shared by the models."""

import uuid
from datetime import datetime, timezone

from sqlalchemy import DateTime, TypeDecorator, Uuid
from sqlalchemy.orm import mapped_column


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def uuid_pk():
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def created_at():
    return mapped_column(UTCDateTime, nullable=False, default=utcnow)


def updated_at():
    return mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)



def include_in_migrations(name, type_, parent_names):
    """Alembic's ``include_name``: vector-store plugins keep their own tables (``vs_*``)
    next to ours, and autogenerate must not offer to drop them."""
    return not (type_ == "table" and name.startswith("vs_"))


def hold_owners(user_id, space_id) -> bool:
    """Take the first locks of a transaction that writes rows under a user and a space (a
    document's chunks, a chat's messages, usage records): a key-share lock on the user's row,
    then on the space's. Deleting an account or a space locks that row before the rows below
    it, so it waits for this transaction instead of deadlocking with it (PostgreSQL; SQLite
    locks the whole file). ``user_id`` may be a scalar subquery. Returns whether the space
    still exists."""
    from sqlalchemy import select

    from spacio.auth.models import User
    from spacio.extensions import db
    from spacio.spaces.models import Space

    db.session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
    return db.session.scalar(select(Space.id).where(Space.id == space_id).with_for_update(key_share=True)) is not None
