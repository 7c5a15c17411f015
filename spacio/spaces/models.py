import uuid

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spacio.db import created_at, updated_at, uuid_pk
from spacio.extensions import db

ROLES = ("viewer", "editor", "owner")  # in order of rights


class Space(db.Model):
    __tablename__ = "spaces"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    owner_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    settings: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    pipeline: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at = created_at()
    updated_at = updated_at()

    memberships = relationship("Membership", back_populates="space", cascade="all, delete-orphan",
                               passive_deletes=True)


class Membership(db.Model):
    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('viewer', 'editor', 'owner')", name="role"),)

    space_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    joined_at = created_at()

    space = relationship("Space", back_populates="memberships")
    user = relationship("User", lazy="joined")
