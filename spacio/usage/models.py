from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Uuid, false
from sqlalchemy.orm import Mapped, mapped_column

from spacio.db import created_at
from spacio.extensions import db

#: what spent the tokens; every kind but ``ingest`` is one API request
KINDS = ("search", "query", "chat", "ingest")
REQUESTS = ("search", "query", "chat")


class UsageRecord(db.Model):
    """Tokens one request (or one ingestion) spent, for whom and in which space.

    A user who deletes their account leaves their records to the space's totals
    (``user_id`` NULL); deleting a space deletes its records with everything else."""

    __tablename__ = "usage_records"
    __table_args__ = (
        CheckConstraint("kind IN ('search', 'query', 'chat', 'ingest')", name="kind"),
        Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
        Index("ix_usage_records_space_id_created_at", "space_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    user_id = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"))
    space_id = mapped_column(Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    embedding_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # the generator's tokens were counted by its plugin: the service it called reported none
    estimated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    created_at = created_at()
