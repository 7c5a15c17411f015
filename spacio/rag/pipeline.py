"""Runs the plugins: ingestion of one document (retrieval and answers come next).

``ingest(document_id)`` is what the ``ingest_document`` actor does: parse -> chunk ->
embed in batches -> replace the document's vectors and chunks -> ``ready``. It is
idempotent: chunk ids are derived from (document, ordinal) and the document's old vectors
are deleted before the new ones are written, so a second run, or a run after a worker was
killed half-way, leaves exactly one copy of each chunk.

Failures: a plugin's ``InvalidInput``/``UnsupportedMediaType`` (or any exception from a
parser or chunker, which only sees the file) fails the document with a reason and is not
retried. ``UpstreamUnavailable`` and unexpected errors (a database restart) raise
``RetryLater`` for Dramatiq to retry with backoff; on the last try the document fails
instead. Each outcome is one log line: an expected failure (an encrypted PDF, a scan) with
its reason and no traceback, an unexpected one with its traceback (``exc`` in JSON logs).
"""

import logging
import time
import uuid

import numpy as np
from flask import current_app
from sqlalchemy import delete, insert, select, update

from spacio.concurrency import in_real_thread, plugin_runner
from spacio.db import hold_owners, utcnow
from spacio.documents.models import Chunk, Document, DocumentFile
from spacio.errors import PluginFailed, SpacioError, Unavailable
from spacio.extensions import db
from spacio.rag import contracts, registry
from spacio.spaces.models import Space
from spacio.usage.services import record_ingestion

log = logging.getLogger(__name__)

CHUNK_NAMESPACE = uuid.UUID("5b0c8a4e-3f8e-4d43-9c55-5d1f0a3a7c21")
PROGRESS_EVERY_S = 1.0


def chunk_id(document_id, ordinal) -> uuid.UUID:
    return uuid.uuid5(CHUNK_NAMESPACE, f"{document_id}:{ordinal}")


def chunking(space_settings, embedder, config=None):
    """(size, overlap) in tokens for a space: its settings, else the defaults, never more
    than the embedder reads."""
    config = config or current_app.config
    size = int(space_settings.get("chunk_size") or config["CHUNK_SIZE"])
    overlap = space_settings.get("chunk_overlap")
    overlap = int(config["CHUNK_OVERLAP"] if overlap is None else overlap)
    size = min(size, int(embedder.max_tokens))
    return size, min(overlap, size // 2 - 1 if size > 2 else 0)


class _Permanent(Exception):
    """The document fails for good; ``crash`` when a plugin's bug, not the file, said so."""

    def __init__(self, reason, message, crash=False):
        super().__init__(message)
        self.reason, self.message, self.crash = reason, message, crash


class RetryLater(Exception):
    """Ingestion failed for a reason that may pass (already logged): try the document again."""


def ingest(document_id, *, last_try=False):
    document_id = uuid.UUID(str(document_id))
    doc = db.session.get(Document, document_id)
    if doc is None or doc.status in ("ready", "failed"):
        db.session.rollback()
        return  # deleted meanwhile, or already done (a message delivered twice)
    reg = registry()
    space = db.session.get(Space, doc.space_id)
    adopt_if_unrecorded(space)
    problem = reg.mismatch(space.pipeline)
    if problem:
        return _fail(document_id, "pipeline_changed", problem)
    parser = reg.parsers.get(doc.media_type)
    if parser is None:
        return _fail(document_id, "unsupported_media_type", f"No installed parser reads {doc.media_type}.")
    size, overlap = chunking(space.settings or {}, reg.embedder)
    data = db.session.scalar(select(DocumentFile.data).where(DocumentFile.document_id == document_id))
    blob = contracts.Blob(data=data or b"", media_type=doc.media_type, filename=doc.filename,
                          max_pages=int(current_app.config["MAX_PAGES"]))
    space_id = doc.space_id  # read now: the commits below expire `doc`, which may be deleted meanwhile
    namespace = str(space_id)
    _set(document_id, status="parsing", progress=0.0, attempts=Document.attempts + 1,
         error_reason=None, error_message=None)
    del data
    started = time.monotonic()
    try:
        parsed, chunks = _parse_and_chunk(reg, parser, blob, size, overlap)
        del blob
        _set(document_id, status="embedding", pages=parsed.pages, progress=0.0)
        vectors, tokens = _embed(reg.embedder, [embedding_input(c, parsed.title) for c in chunks], document_id)
        records = [
            contracts.VectorRecord(
                id=str(chunk_id(document_id, c.ordinal)), document_id=str(document_id), ordinal=c.ordinal,
                text=c.text, vector=vectors[i], page=c.page,
                metadata={"heading": c.heading, "page_end": c.page_end})
            for i, c in enumerate(chunks)
        ]
        if db.session.scalar(select(Document.id).where(Document.id == document_id)) is None:
            db.session.rollback()
            return  # deleted, alone or with its space, while we worked: write nothing
        db.session.rollback()  # no transaction stays open while the store is written
        # on a real thread unless the store says cpu_bound = False (pgvector: its pool's queues
        # belong to the gevent hub and break when a real thread uses them)
        plugin_runner(reg.vector_store)(_replace_vectors, reg.vector_store, namespace, int(reg.embedder.dimensions),
                                        str(document_id), records)
        _finish(document_id, space_id, namespace, chunks, tokens)
        log.info("ingested document %s: %d pages, %d chunks, %d tokens in %.1f s", document_id,
                 parsed.pages or 0, len(chunks), tokens, time.monotonic() - started)
    except _Permanent as exc:
        _fail(document_id, exc.reason, exc.message, crash=exc.__cause__ if exc.crash else None)
    except contracts.PluginError as exc:
        db.session.rollback()
        if exc.retryable and not last_try:
            log.warning("ingestion of %s will be retried: %s (%s)", document_id, exc.message, exc.reason)
            _set(document_id, status="queued", progress=0.0)
            raise RetryLater(exc.reason) from exc
        _fail(document_id, exc.reason, exc.message)
    except Exception as exc:
        db.session.rollback()
        if not last_try:
            log.warning("ingestion of %s failed; it will be retried", document_id, exc_info=True)
            _set(document_id, status="queued", progress=0.0)
            raise RetryLater(exc.__class__.__name__) from exc
        _fail(document_id, "ingestion_error", "Ingestion failed unexpectedly; the server's log has the details.",
              crash=exc)


def _parse_and_chunk(reg, parser, blob, size, overlap):
    """Parse and chunk on a real thread. These plugins only see the file, so whatever they
    raise is a property of the file: permanent."""

    def work():
        parsed = parser.parse(blob)
        if parsed.pages is not None and parsed.pages > (blob.max_pages or parsed.pages):
            raise contracts.InvalidInput(f"The document has {parsed.pages} pages; the limit is {blob.max_pages}.",
                                         reason="too_many_pages")
        if not any(section.text.strip() for section in parsed.sections):
            raise contracts.InvalidInput("The document contains no text.", reason="empty_document")
        chunks = list(reg.chunker.chunk(parsed, tokenizer=reg.embedder.tokenizer, size=size, overlap=overlap))
        if not chunks:
            raise contracts.InvalidInput("The document contains no text.", reason="empty_document")
        return parsed, chunks

    try:
        return in_real_thread(work)
    except contracts.UpstreamUnavailable:
        raise
    except contracts.PluginError as exc:
        raise _Permanent(exc.reason, exc.message) from exc
    except Exception as exc:  # a parser bug on a strange file fails that file, not the worker
        raise _Permanent("parser_error", f"The file could not be read ({exc.__class__.__name__}).",
                         crash=True) from exc


def embedding_input(chunk, title):
    """What the embedder reads for a chunk: the chunk's text under its document's title and
    its heading path, each unless the text already begins with it. A chunk from the middle
    of a document is then also found by what the whole document is about (SciFact train,
    vector-only nDCG@10 0.6686 -> 0.6775 with titles). Stores and citations keep the chunk's
    own text; keyword search reads only that."""
    context = [label for label in dict.fromkeys((title, chunk.heading)) if label and not chunk.text.startswith(label)]
    return "\n\n".join([*context, chunk.text])


def _embed(embedder, texts, document_id):
    batch = max(1, min(int(current_app.config["EMBED_BATCH_SIZE"]), int(embedder.max_batch_size)))
    parts, tokens, last_report = [], 0, time.monotonic()
    for start in range(0, len(texts), batch):
        result = in_real_thread(embedder.embed_documents, texts[start:start + batch])
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if vectors.shape != (len(texts[start:start + batch]), int(embedder.dimensions)):
            raise contracts.PluginError(f"The embedder returned vectors of shape {vectors.shape}.")
        parts.append(vectors)
        tokens += int(result.tokens)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            _set(document_id, progress=round(0.95 * (start + batch) / len(texts), 3))
            last_report = time.monotonic()
    return np.concatenate(parts), tokens


def _replace_vectors(store, namespace, dimensions, document_id, records):
    """Delete the document's old vectors, then write the new ones (ids are stable, so a
    crash between the two is repaired by the next run)."""
    store.ensure_namespace(namespace, dimensions)
    store.delete_document(namespace, document_id)
    store.upsert(namespace, records)


def _finish(document_id, space_id, namespace, chunks, tokens):
    """Mark the document ready and write its chunks and the uploader's usage, in one
    transaction. Rows are locked top down, as requests lock them (the uploader, the space, the
    document, its chunks): deleting the account or the space, or reindexing the space, waits
    for this transaction or runs before it, never deadlocks with it.

    The document, or its whole space, may have been deleted since the vectors were written:
    then they are taken back out, and with the space its namespace, which writing recreated
    after the delete had dropped it. A delete that commits after this check removes the
    vectors again itself (``forget_deleted``)."""
    uploader = select(Document.uploaded_by).where(Document.id == document_id).scalar_subquery()
    space_alive = hold_owners(uploader, space_id)
    done = space_alive and db.session.execute(
        update(Document).where(Document.id == document_id)
        .values(status="ready", progress=1.0, chunks=len(chunks), tokens=tokens, updated_at=utcnow())
    ).rowcount
    if not done:
        db.session.rollback()
        store = registry().vector_store
        if space_alive:
            plugin_runner(store)(store.delete_document, namespace, str(document_id))
        else:
            plugin_runner(store)(store.drop_namespace, namespace)
        return
    db.session.execute(delete(Chunk).where(Chunk.document_id == document_id))
    db.session.execute(insert(Chunk), [
        {"id": chunk_id(document_id, c.ordinal), "space_id": space_id, "document_id": document_id,
         "ordinal": c.ordinal, "page": c.page, "page_end": c.page_end, "heading": c.heading,
         "text": c.text, "tokens": c.tokens}
        for c in chunks
    ])
    record_ingestion(document_id, tokens)  # the uploader's usage: embedding tokens of this run
    db.session.commit()


def _set(document_id, **values):
    db.session.execute(update(Document).where(Document.id == document_id).values(updated_at=utcnow(), **values))
    db.session.commit()


def _fail(document_id, reason, message, crash=None):
    """The document fails with ``reason``: one log line, with the traceback of ``crash`` (an
    unexpected exception) when there is one."""
    db.session.rollback()
    if crash is None:
        log.info("document %s failed: %s", document_id, reason)
    else:
        log.error("document %s failed: %s", document_id, reason, exc_info=crash)
    _set(document_id, status="failed", progress=0.0, error_reason=reason, error_message=message)


def forget_document(space_id, document_id):
    """Remove a document's vectors (before its rows are deleted)."""
    plugin_call(registry().vector_store.delete_document, str(space_id), str(document_id))


def forget_space(space_id):
    """Remove a space's vectors (before its rows are deleted)."""
    plugin_call(registry().vector_store.drop_namespace, str(space_id))


def forget_deleted(space_id, document_id=None):
    """Remove a deleted space's vectors, or one deleted document's, once more after the delete
    committed. Ingestion may have written them between the first removal and the commit, and
    then still found its document (``_finish``); one that looks after the commit finds it gone
    and removes them itself. (A lock cannot keep ingestion out meanwhile: SQLite has no row
    locks, and the request cannot hold the whole file while the local store, which writes that
    same file, removes the vectors.) Best effort: the rows are gone and the request succeeds,
    so a store that fails now is only logged."""
    store = registry().vector_store
    try:
        if document_id is None:
            store.drop_namespace(str(space_id))
        else:
            store.delete_document(str(space_id), str(document_id))
    except Exception:
        log.warning("could not remove the vectors of deleted %s %s again", "space" if document_id is None else
                    "document", document_id or space_id, exc_info=True)


def plugin_call(call, *args, what="The vector store", **kwargs):
    """A plugin call a request waits for (``call(*args, **kwargs)``, e.g. ``in_real_thread``
    with the plugin's method): a service that is down answers 503 with the one error body
    (API.md), any other plugin failure, or a plugin's own bug, 502 ``plugin_error``, never a
    500; the request changes nothing."""
    try:
        return call(*args, **kwargs)
    except contracts.UpstreamUnavailable as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        raise Unavailable(f"{what} is unavailable: {exc.message}", reason=exc.reason,
                          headers=headers) from exc
    except contracts.PluginError as exc:  # the plugin's own reason (upstream_error: a bad key, an unknown model)
        log.warning("%s failed: %s (%s)", what, exc.message, exc.reason)
        raise PluginFailed(f"{what} failed: {exc.message}", reason=exc.reason) from exc
    except SpacioError:
        raise
    except Exception as exc:  # a third-party plugin's bug or SDK error: logged, 502, never a 500
        log.exception("%s raised %s", what, exc.__class__.__name__)
        raise PluginFailed(f"{what} failed ({exc.__class__.__name__}).", reason="plugin_error") from exc


def adopt_if_unrecorded(space):
    """Spaces made before ingestion existed recorded plugin names only, and hold no
    vectors: they take the current pipeline instead of failing with pipeline_changed."""
    if "model" not in ((space.pipeline or {}).get("embedder") or {}):
        space.pipeline = registry().pipeline()
        db.session.commit()


def describe_new_space():
    """The pipeline a new space records."""
    return registry().pipeline()
