import uuid

from sqlalchemy import (JSON, CheckConstraint, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint, Uuid)
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from spacio.db import created_at, updated_at, uuid_pk
from spacio.extensions import db

STATUSES = ("queued", "parsing", "embedding", "ready", "failed")
UNFINISHED = ("queued", "parsing", "embedding")


class Document(db.Model):
    """An uploaded file and where its ingestion stands."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("space_id", "sha256"),  # the same bytes once per space
        CheckConstraint("status IN ('queued', 'parsing', 'embedding', 'ready', 'failed')", name="status"),
        Index("ix_documents_space_id_status", "space_id", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    space_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"),
                                                          index=True)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    media_type: Mapped[str | None] = mapped_column(String(127))  # sniffed from the content
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # embedded, for usage
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # per page, where the text came from (spacio.rag.pipeline.diagnostics_of); None: not reported
    diagnostics: Mapped[dict | None] = mapped_column(JSON)
    created_at = created_at()
    updated_at = updated_at()

    file = relationship("DocumentFile", uselist=False, cascade="all, delete-orphan", passive_deletes=True,
                        lazy="select")

    @property
    def error(self):
        if self.status != "failed":
            return None
        return {"reason": self.error_reason, "message": self.error_message}


class DocumentFile(db.Model):
    """The original bytes. Kept in the database so web and worker processes on different
    machines (a PaaS) see the same file, and so a document and its bytes commit together."""

    __tablename__ = "document_files"

    document_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))


class Chunk(db.Model):
    """A passage of a ready document: what citations point at. Its id is also the id of
    its vector in the space's vector store, in ``namespace``: the space's index, or the new
    one a reindex is building beside it."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "namespace", "ordinal"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    space_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False,
                                                index=True)
    document_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("documents.id", ondelete="CASCADE"),
                                                   nullable=False)
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    page: Mapped[int | None] = mapped_column(Integer)
    page_end: Mapped[int | None] = mapped_column(Integer)
    heading: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    namespace: Mapped[str] = mapped_column(String(100), nullable=False)


BUILD_STATUSES = ("building", "switched", "failed")


class IndexBuild(db.Model):
    """A reindex: the space's documents indexed again, with the plugins in ``pipeline``, into
    a new namespace beside the one that keeps answering; when every document is in, the space
    switches to it in one transaction (``spacio.rag.reindexing``)."""

    __tablename__ = "index_builds"
    __table_args__ = (
        CheckConstraint("status IN ('building', 'switched', 'failed')", name="status"),
        Index("ix_index_builds_space_id_status", "space_id", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    space_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False)
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"))
    pipeline: Mapped[dict] = mapped_column(JSON, nullable=False)  # what the space records after the switch
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="building")
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at = created_at()
    updated_at = updated_at()

    @property
    def error(self):
        if self.status != "failed":
            return None
        return {"reason": self.error_reason, "message": self.error_message}


class BuildDocument(db.Model):
    """One document of a reindex: ``queued`` until it is in the new index (``done``) or
    cannot be read by the new plugins (``failed``: the document shows that after the switch)."""

    __tablename__ = "build_documents"
    __table_args__ = (CheckConstraint("status IN ('queued', 'done', 'failed')", name="status"),)

    build_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("index_builds.id", ondelete="CASCADE"),
                                                primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("documents.id", ondelete="CASCADE"),
                                                   primary_key=True, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    pages: Mapped[int | None] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    diagnostics: Mapped[dict | None] = mapped_column(JSON)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
