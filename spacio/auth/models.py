import uuid

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spacio.db import UTCDateTime, created_at, updated_at, uuid_pk
from spacio.extensions import db


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)  # normalised
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at = created_at()
    updated_at = updated_at()

    sessions = relationship("AuthSession", back_populates="user", cascade="all, delete-orphan",
                            passive_deletes=True)


class AuthSession(db.Model):
    """One login. Access and refresh tokens carry its id (``sid``); revoking it ends both.

    ``refresh_jti`` is the only refresh token that may be used next: refreshing rotates
    it, and presenting an older one (a stolen copy) revokes the session. The exception is
    ``previous_refresh_jti``, the one the last rotation (at ``refreshed_at``) spent: within
    a short grace window it is answered with that rotation's pair again
    (``spacio.auth.services.refresh``).
    """

    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    refresh_jti: Mapped[str] = mapped_column(String(64), nullable=False)
    previous_refresh_jti: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at = created_at()
    refreshed_at = mapped_column(UTCDateTime, nullable=True)
    expires_at = mapped_column(UTCDateTime, nullable=False)
    revoked_at = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)

    user = relationship("User", back_populates="sessions")


class PasswordReset(db.Model):
    __tablename__ = "password_resets"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at = created_at()
    expires_at = mapped_column(UTCDateTime, nullable=False)
    used_at = mapped_column(UTCDateTime, nullable=True)
