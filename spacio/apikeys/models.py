import uuid

from sqlalchemy import CheckConstraint, ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from spacio.db import UTCDateTime, created_at, uuid_pk
from spacio.extensions import db


class ApiKey(db.Model):
    """A key scoped to one space and a role. The secret is shown once; only its SHA-256 is kept.

    The key's text is ``spk_<id as 32 hex digits>_<secret>``: the id part finds the row by
    its primary key, the secret part is compared (as a hash, in constant time) with it."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("role IN ('viewer', 'editor')", name="role"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    space_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at = created_at()
    last_used_at = mapped_column(UTCDateTime, nullable=True)
