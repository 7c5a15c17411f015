"""Reindexing a space without a gap: the new index is built beside the one that answers.

``start(space, user)`` records an ``IndexBuild``: the server's current plugins and a new
namespace, and one ``BuildDocument`` per document with a kept file. The ``build_document``
actor runs ``build(build_id, document_id)`` for each: the same steps as ingestion
(``pipeline.index_document``), written into the new namespace, with chunks of their own. The
space's documents, chunks and vectors meanwhile stay as they are: searches, answers and
citations use the old index, with the plugins it recorded.

When no document of the build is left queued, ``switch`` makes the new index the space's in
one transaction: the space records the new pipeline and namespace, each document takes its
outcome in the new index (ready, or failed with the new plugins' reason), the old index's
chunks go; then the old namespace is dropped. A document that cannot be indexed for a reason
that may pass (a service down through every retry) fails the whole build instead: the new
namespace is dropped, and the space keeps answering from the old one as if nothing happened.

Documents uploaded, reindexed or deleted during a build join it, run again in it, or leave it
(which may complete it). Locks follow ingestion's order (the space, then the build, then
documents and chunks), so a switch waits for a document being written, never deadlocks with it.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import bindparam, delete, exists, func, select, update

from spacio.concurrency import plugin_runner
from spacio.db import hold_owners, utcnow
from spacio.documents.models import BuildDocument, Chunk, Document, DocumentFile, IndexBuild
from spacio.extensions import db
from spacio.rag import contracts, pipeline, registry
from spacio.rag.registry import Unusable
from spacio.spaces.models import Space
from spacio.usage.services import record_ingestion

log = logging.getLogger(__name__)


def building(space_id) -> IndexBuild | None:
    """The space's build under way, if any."""
    return db.session.scalar(select(IndexBuild).where(IndexBuild.space_id == space_id,
                                                      IndexBuild.status == "building"))


def latest(space_id) -> IndexBuild | None:
    return db.session.scalar(select(IndexBuild).where(IndexBuild.space_id == space_id)
                             .order_by(IndexBuild.created_at.desc()).limit(1))


def progress(build: IndexBuild) -> dict:
    """How far a build is: its documents (``total``), done, failed (by the new plugins) and queued."""
    counts = dict(db.session.execute(select(BuildDocument.status, func.count()).where(
        BuildDocument.build_id == build.id).group_by(BuildDocument.status)).all())
    found = {status: int(counts.get(status, 0)) for status in ("queued", "done", "failed")}
    return {"total": sum(found.values()), **found}


def start(space, user_id) -> tuple[IndexBuild, list[uuid.UUID]]:
    """Record a build of ``space`` with the server's current plugins, in the caller's
    transaction (which has locked the space); returns it and the documents to enqueue."""
    build_id = uuid.uuid4()
    recorded = {**registry().pipeline(), "namespace": f"{space.id}-{build_id.hex[:12]}"}
    ids = list(db.session.scalars(
        select(Document.id).join(DocumentFile, DocumentFile.document_id == Document.id)
        .where(Document.space_id == space.id)))
    build = IndexBuild(id=build_id, space_id=space.id, requested_by=user_id, pipeline=recorded)
    db.session.add(build)
    db.session.flush()
    if ids:
        db.session.execute(BuildDocument.__table__.insert(),
                           [{"build_id": build_id, "document_id": i, "status": "queued", "chunks": 0, "tokens": 0}
                            for i in ids])
    return build, ids


def join(space_id, document_ids) -> uuid.UUID | None:
    """Documents new to the space, or reindexed, during a build: (re)queued in it, in the
    caller's transaction. Returns the build's id, or None when none is under way."""
    build = building(space_id)
    if build is None or not document_ids:
        return None
    db.session.execute(delete(BuildDocument).where(BuildDocument.build_id == build.id,
                                                   BuildDocument.document_id.in_(document_ids)))
    db.session.execute(BuildDocument.__table__.insert(),
                       [{"build_id": build.id, "document_id": i, "status": "queued", "chunks": 0, "tokens": 0}
                        for i in document_ids])
    return build.id


def queued_items():
    """(build id, document id) of every document builds still wait for (an in-process worker
    starting again re-enqueues them)."""
    return db.session.execute(select(BuildDocument.build_id, BuildDocument.document_id)
                              .join(IndexBuild, IndexBuild.id == BuildDocument.build_id)
                              .where(IndexBuild.status == "building", BuildDocument.status == "queued")).all()


def build(build_id, document_id, *, last_try=False):
    """Index one document of a build into its namespace (the ``build_document`` actor)."""
    build_id, document_id = uuid.UUID(str(build_id)), uuid.UUID(str(document_id))
    row = db.session.execute(select(IndexBuild.space_id, IndexBuild.pipeline, IndexBuild.status, BuildDocument.status)
                             .join(BuildDocument, BuildDocument.build_id == IndexBuild.id)
                             .where(IndexBuild.id == build_id, BuildDocument.document_id == document_id)).first()
    settings = db.session.scalar(select(Space.settings).where(Space.id == row[0])) if row else None
    db.session.rollback()
    if row is None or row[2] != "building" or row[3] != "queued":
        return  # finished, failed, or the document left it: nothing to do
    space_id, recorded = row[0], row[1]
    try:
        into = pipeline.target(space_id, recorded)
    except Unusable as exc:  # the server no longer has the plugins it started with
        return fail(build_id, "pipeline_changed", str(exc))
    try:
        indexed = pipeline.index_document(document_id, into, settings)
        if indexed is None:
            return switch_if_complete(build_id)  # deleted meanwhile: its item went with it
        _finish(build_id, document_id, into, indexed)
    except pipeline.Permanent as exc:  # this file, with the new plugins: the document will show it
        if exc.crash:
            log.error("document %s failed in reindex %s: %s", document_id, build_id, exc.reason, exc_info=exc.__cause__)
        _item(build_id, document_id, status="failed", error_reason=exc.reason, error_message=exc.message)
    except contracts.PluginError as exc:
        db.session.rollback()
        if exc.retryable and not last_try:
            log.warning("reindexing %s will be retried: %s (%s)", document_id, exc.message, exc.reason)
            raise pipeline.RetryLater(exc.reason) from exc
        fail(build_id, exc.reason, f"Document {document_id} could not be indexed: {exc.message}")
    except Exception as exc:
        db.session.rollback()
        if not last_try:
            log.warning("reindexing %s failed; it will be retried", document_id, exc_info=True)
            raise pipeline.RetryLater(exc.__class__.__name__) from exc
        log.error("reindexing %s failed on its last try", document_id, exc_info=exc)
        fail(build_id, "ingestion_error", "Reindexing failed unexpectedly; the server's log has the details.")
    switch_if_complete(build_id)


def _finish(build_id, document_id, into, indexed):
    """Write the document's chunks in the new namespace and mark it done, in one transaction,
    if the build still runs and still waits for it. A build that failed meanwhile dropped its
    namespace, which writing recreated: it goes again."""
    uploader = select(Document.uploaded_by).where(Document.id == document_id).scalar_subquery()
    hold_owners(uploader, into.space_id)
    status = db.session.scalar(select(IndexBuild.status).where(IndexBuild.id == build_id)
                               .with_for_update(read=True))  # a switch updates the row: it waits for us
    done = status == "building" and db.session.execute(
        update(BuildDocument).where(BuildDocument.build_id == build_id, BuildDocument.document_id == document_id,
                                    BuildDocument.status == "queued")
        .values(status="done", pages=indexed.pages, chunks=len(indexed.chunks), tokens=indexed.tokens,
                diagnostics=indexed.diagnostics)).rowcount
    if not done:
        db.session.rollback()
        if status != "building":
            store = into.plugins.vector_store
            if status != "switched":
                plugin_runner(store)(store.drop_namespace, into.namespace)
        return
    pipeline.write_chunks(document_id, into, indexed.chunks)
    record_ingestion(document_id, indexed.tokens)  # embedding tokens spent, as for an upload
    db.session.commit()


def _item(build_id, document_id, **values):
    db.session.rollback()
    db.session.execute(update(BuildDocument).where(BuildDocument.build_id == build_id,
                                                   BuildDocument.document_id == document_id,
                                                   BuildDocument.status == "queued").values(**values))
    db.session.commit()


def fail(build_id, reason, message):
    """The build fails: the space keeps its index; the new namespace and its chunks go."""
    db.session.rollback()
    row = db.session.execute(select(IndexBuild.space_id, IndexBuild.pipeline).where(IndexBuild.id == build_id)).first()
    failed = row is not None and db.session.execute(
        update(IndexBuild).where(IndexBuild.id == build_id, IndexBuild.status == "building")
        .values(status="failed", error_reason=reason, error_message=message, updated_at=utcnow())).rowcount
    if not failed:
        db.session.rollback()
        return
    namespace = pipeline.namespace_of(row.space_id, row.pipeline)
    db.session.execute(delete(Chunk).where(Chunk.space_id == row.space_id, Chunk.namespace == namespace))
    db.session.commit()
    log.warning("reindex %s of space %s failed: %s", build_id, row.space_id, reason)
    _drop(row.space_id, row.pipeline)


def switch_if_complete(build_id) -> bool:
    """Switch the space to the build's index once no document is queued in it (one
    transaction; whoever finishes the last document, or deletes it, does it)."""
    db.session.rollback()
    build = db.session.get(IndexBuild, build_id)
    if build is None or build.status != "building":
        db.session.rollback()
        return False
    space_id, recorded = build.space_id, dict(build.pipeline)
    space = db.session.scalar(select(Space).where(Space.id == space_id).with_for_update())
    queued = exists().where(BuildDocument.build_id == build_id, BuildDocument.status == "queued")
    won = space is not None and db.session.execute(
        update(IndexBuild).where(IndexBuild.id == build_id, IndexBuild.status == "building", ~queued)
        .values(status="switched", updated_at=utcnow())).rowcount
    if not won:
        db.session.rollback()
        return False
    old = dict(space.pipeline or {})
    items = db.session.execute(select(BuildDocument).where(BuildDocument.build_id == build_id)).scalars().all()
    if items:  # each document as the new index has it; a run under way in the old one is overtaken
        documents = Document.__table__
        db.session.execute(
            update(documents).where(documents.c.id == bindparam("document")).values(
                status=bindparam("status"), progress=bindparam("progress"), pages=bindparam("pages"),
                chunks=bindparam("chunks"), tokens=bindparam("tokens"), diagnostics=bindparam("diagnostics"),
                error_reason=bindparam("reason"),
                error_message=bindparam("message"), attempts=documents.c.attempts + 1, updated_at=utcnow()),
            [{"document": item.document_id, "status": "ready" if item.status == "done" else "failed",
              "progress": 1.0 if item.status == "done" else 0.0, "pages": item.pages, "chunks": item.chunks,
              "tokens": item.tokens, "diagnostics": item.diagnostics, "reason": item.error_reason,
              "message": item.error_message}
             for item in items])
    namespace = pipeline.namespace_of(space_id, recorded)
    db.session.execute(delete(Chunk).where(Chunk.space_id == space_id, Chunk.namespace != namespace))
    space.pipeline = recorded
    db.session.commit()
    log.info("space %s switched to its new index %s (%d documents)", space_id, namespace, len(items))
    _drop(space_id, old)
    return True


def _drop(space_id, recorded):
    """Drop a namespace nothing uses any more. Best effort: its rows are gone already."""
    try:
        into = pipeline.target(space_id, recorded)
        plugin_runner(into.plugins.vector_store)(into.plugins.vector_store.drop_namespace, into.namespace)
    except Exception:
        log.warning("could not drop the namespace %s of space %s", pipeline.namespace_of(space_id, recorded), space_id,
                    exc_info=True)
