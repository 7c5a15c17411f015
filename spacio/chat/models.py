import uuid

from sqlalchemy import (JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        Uuid, false)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spacio.db import created_at, updated_at, uuid_pk
from spacio.extensions import db

ROLES = ("user", "assistant")
STATUSES = ("complete", "interrupted")


class Conversation(db.Model):
    """One user's chat in one space. ``message_count`` is also the ``seq`` of its newest
    message: the chat memory in Redis is checked against it (``spacio.chat.memory``)."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_space_id_user_id_updated_at", "space_id", "user_id", "updated_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    space_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
                                               index=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    message_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at = created_at()
    updated_at = updated_at()

    user = relationship("User", lazy="joined")


class Message(db.Model):
    """A user's question or an assistant's answer. ``seq`` numbers a conversation's
    messages from 1 in the order they were stored; an answer is stored when it ends, so it
    follows its question."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        CheckConstraint("status IN ('complete', 'interrupted')", name="status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    citations: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    grounded: Mapped[bool | None] = mapped_column(Boolean)  # answers only
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="complete")
    # answers only: what producing this answer cost
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    embedding_tokens: Mapped[int | None] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    created_at = created_at()

    @property
    def usage(self):
        if self.role != "assistant":
            return None
        return {"prompt_tokens": self.prompt_tokens or 0, "completion_tokens": self.completion_tokens or 0,
                "embedding_tokens": self.embedding_tokens or 0, "estimated": bool(self.usage_estimated)}
