"""Documents: upload (sniff, dedup, store, enqueue), list, read, delete, reindex."""

import uuid

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from spacio.db import utcnow
from spacio.documents.models import UNFINISHED, Chunk, Document, DocumentFile
from spacio.documents.uploads import read_upload, safe_filename
from spacio.errors import Conflict, Invalid, NotFound, Unavailable
from spacio.extensions import db
from spacio.jobs import QueueUnavailable, jobs
from spacio.rag import pipeline, registry, reindexing
from spacio.rag.sniff import sniff
from spacio.spaces.models import Space
from spacio.spaces.services import READ, WRITE, access

REJECTED = ("unsupported_media_type", "file_too_large")
MIB = 1024 * 1024


def add_documents(user, space_id, files):
    """Store each uploaded file as a document and queue the new ones for ingestion.

    Returns (documents, number queued), one document per file in order. A file whose bytes
    the space already has gives the existing document. A file of an unsupported type or
    over the size limit gives a ``failed`` document whose bytes are not kept."""
    space = access(user, space_id, WRITE)
    limit = int(current_app.config["UPLOAD_MAX_FILES"])
    if len(files) > limit:
        raise Invalid(f"At most {limit} files per request.", reason="too_many_files",
                      errors={"files": [f"Longer than maximum length {limit}."]})
    uploads = [(safe_filename(f.filename), *read_upload(f, int(current_app.config["UPLOAD_MAX_FILE_BYTES"])))
               for f in files]
    for attempt in (1, 2):
        try:
            documents, queued = _store(space, user, uploads)
            build_id = reindexing.join(space.id, queued)  # a reindex under way takes them too
            db.session.commit()
            break
        except IntegrityError:
            # the same bytes arrived in a concurrent request: the retry finds its document
            db.session.rollback()
            if attempt == 2:
                raise
    refused = _enqueue(queued, build_id)
    return documents, len(queued) - refused


def _store(space, user, uploads):
    max_bytes = int(current_app.config["UPLOAD_MAX_FILE_BYTES"])
    parsers = registry().parsers
    documents, queued, created = [], [], set()
    for filename, data, size, digest in uploads:
        existing = db.session.scalar(select(Document).where(Document.space_id == space.id, Document.sha256 == digest))
        if existing is not None and (existing.id in created or existing.status != "failed" or existing.file):
            documents.append(existing)
            continue
        if existing is not None:
            # rejected by an earlier upload, its bytes not kept: the same document, judged again,
            # since the size limit or the installed parsers may have changed (reindex's 409 says
            # to upload the file again)
            doc = existing
            doc.status, doc.media_type, doc.error_reason, doc.error_message = "queued", None, None, None
        else:
            doc = Document(space_id=space.id, uploaded_by=user.id, filename=filename, size_bytes=size, sha256=digest,
                           status="queued", progress=0.0, chunks=0, tokens=0, attempts=0)
        if data is None:
            _reject(doc, "file_too_large", f"The file is larger than the limit of {max_bytes // MIB} MB.")
        elif not data.strip():
            _reject(doc, "empty_document", "The file is empty.")
        else:
            doc.media_type = sniff(data, filename)
            if doc.media_type is None:
                _reject(doc, "unsupported_media_type",
                        "The content is not a supported type (PDF, DOCX, HTML, Markdown, text or JSON).")
            elif doc.media_type not in parsers:
                _reject(doc, "unsupported_media_type", f"No installed parser reads {doc.media_type}.")
            else:
                doc.file = DocumentFile(data=data)
        db.session.add(doc)
        db.session.flush()
        created.add(doc.id)
        if doc.status == "queued":
            queued.append(doc.id)
        documents.append(doc)
    return documents, queued


def _reject(doc, reason, message):
    doc.status, doc.error_reason, doc.error_message = "failed", reason, message


def all_rejected(documents):
    """The reason when every file of an upload was rejected (413/415), else None."""
    reasons = {d.error_reason if d.status == "failed" else None for d in documents}
    if documents and reasons <= set(REJECTED):
        return "file_too_large" if reasons == {"file_too_large"} else "unsupported_media_type"
    return None


def documents_of(user, space_id, status=None):
    space = access(user, space_id, READ)
    statement = select(Document).where(Document.space_id == space.id)
    if status:
        statement = statement.where(Document.status == status)
    return statement.order_by(Document.created_at.desc(), Document.id)


def get(user, space_id, document_id, needs=READ):
    space = access(user, space_id, needs)
    doc = db.session.get(Document, document_id)
    if doc is None or doc.space_id != space.id:
        raise NotFound("Document not found.", reason="document_not_found")
    return doc


def original(user, space_id, document_id):
    """(document, bytes) of a document's original file."""
    doc = get(user, space_id, document_id)
    data = db.session.scalar(select(DocumentFile.data).where(DocumentFile.document_id == doc.id))
    if data is None:
        raise NotFound("This upload was rejected, so its bytes were not kept.", reason="file_not_kept")
    return doc, data


def delete(user, space_id, document_id):
    """Delete a document, its file, chunks and vectors. The vectors go first: if the vector
    store is down the request fails and nothing is lost."""
    doc = get(user, space_id, document_id, WRITE)
    space, document_id = access(user, space_id, WRITE), doc.id
    indexes = pipeline.forget_document(space, document_id)
    build = reindexing.building(space.id)
    db.session.delete(doc)
    db.session.commit()
    pipeline.forget_deleted(indexes, document_id)  # and again: ingestion may have written some meanwhile
    if build is not None:  # a reindex that waited for it may be complete now
        reindexing.switch_if_complete(build.id)


def reindex(user, space_id, document_id):
    doc = get(user, space_id, document_id, WRITE)
    space = access(user, space_id, WRITE)
    pipeline.adopt_if_unrecorded(space)
    problem = registry().mismatch(space.pipeline)
    if problem:
        raise Conflict(problem + " (POST /spaces/{space_id}/reindex)", reason="pipeline_changed")
    if db.session.scalar(select(DocumentFile.document_id).where(DocumentFile.document_id == doc.id)) is None:
        raise Conflict("This upload was rejected, so there is nothing to reindex; upload the file again.",
                       reason="file_not_kept")
    _requeue(select(Document.id).where(Document.id == doc.id))
    build_id = reindexing.join(space.id, [doc.id])  # a reindex of the space under way takes it again too
    db.session.commit()
    if _enqueue([doc.id], build_id):
        raise _queue_unavailable()
    db.session.refresh(doc)
    return doc


def reindex_space(user, space_id):
    """Move a space to the server's current plugins without a gap (``start_reindex``)."""
    space = access(user, space_id, WRITE)
    start_reindex(space, user.id)
    return reindex_status(user, space.id)


def start_reindex(space, user_id=None):
    """Index every document of ``space`` with a kept file again, into a new namespace, while
    the space keeps answering from the old one; the space switches when all are in
    (``spacio.rag.reindexing``). 409 while one runs. Returns the build's id."""
    db.session.execute(select(Space.id).where(Space.id == space.id).with_for_update())  # one build at a time
    if reindexing.building(space.id) is not None:
        raise Conflict("This space is being reindexed already; GET /spaces/{space_id}/reindex shows how far.",
                       reason="reindex_in_progress")
    build, ids = reindexing.start(space, user_id)
    build_id = build.id
    db.session.commit()
    if not ids:
        reindexing.switch_if_complete(build_id)
        return build_id
    try:
        jobs().enqueue_build(build_id, ids)
    except QueueUnavailable:
        reindexing.fail(build_id, "queue_unavailable", "The ingestion queue was unavailable; reindex again.")
        raise _queue_unavailable() from None
    return build_id


def reindex_status(user, space_id):
    """The space's latest reindex, with how far it is."""
    space = access(user, space_id, READ)
    build = reindexing.latest(space.id)
    if build is None:  # never reindexed: its index is the one it was created with
        return {"id": None, "space_id": space.id, "status": "none", "error": None,
                "pipeline": {k: v for k, v in (space.pipeline or {}).items() if k != "namespace"},
                "total": 0, "queued": 0, "done": 0, "failed": 0, "documents": 0, "created_at": None,
                "updated_at": None}
    return describe_reindex(build)


def describe_reindex(build):
    counts = reindexing.progress(build)
    return {"id": build.id, "space_id": build.space_id, "status": build.status, "error": build.error,
            "pipeline": {k: v for k, v in build.pipeline.items() if k != "namespace"},
            **counts, "documents": counts["total"], "created_at": build.created_at, "updated_at": build.updated_at}


def _enqueue(ids, build_id=None):
    """Queue committed documents (and, with ``build_id``, their run in a reindex under way);
    returns how many the queue refused (Redis down). Those fail with ``queue_unavailable``
    instead of waiting ``queued`` for a message that does not exist; their files are kept, so a
    reindex retries them. A reindex whose message is refused fails (the space keeps its index)."""
    if build_id is not None:
        try:
            jobs().enqueue_build(build_id, ids)
        except QueueUnavailable:
            reindexing.fail(build_id, "queue_unavailable", "The ingestion queue was unavailable; reindex again.")
    try:
        jobs().enqueue_ingest(ids)
        return 0
    except QueueUnavailable as exc:
        db.session.execute(
            update(Document).where(Document.id.in_(exc.unsent), Document.status == "queued")
            .values(status="failed", progress=0.0, error_reason="queue_unavailable", updated_at=utcnow(),
                    error_message="The ingestion queue was unavailable; reindex the document to try again."))
        db.session.commit()
        return len(exc.unsent)


def _queue_unavailable():
    return Unavailable("The ingestion queue is unavailable; retry in a moment.", reason="queue_unavailable",
                       headers={"Retry-After": "5"})


def _requeue(ids_select):
    """Queue documents again (a run of theirs under way is overtaken when the new one starts)."""
    db.session.execute(
        update(Document).where(Document.id.in_(ids_select))
        .values(status="queued", progress=0.0, error_reason=None, error_message=None, updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


def chunk(user, space_id, chunk_id):
    space = access(user, space_id, READ)
    found = db.session.get(Chunk, chunk_id)
    if found is None or found.space_id != space.id:
        raise NotFound("Chunk not found.", reason="chunk_not_found")
    return found


def unfinished_ids():
    return [uuid.UUID(str(i)) for i in db.session.scalars(select(Document.id).where(Document.status.in_(UNFINISHED)))]
