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
