"""Runs the plugins: ingestion of one document, into the space's index or a reindex's new one.

``ingest(document_id)`` is what the ``ingest_document`` actor does: parse -> chunk ->
embed in batches -> replace the document's vectors and chunks -> ``ready``, with the plugins
the space recorded (``Registry.resolve``), into its namespace. It is idempotent: chunk ids
are derived from (namespace, document, ordinal) and the document's old vectors are deleted
before the new ones are written, so a second run, or a run after a worker was killed
half-way, leaves exactly one copy of each chunk. Each run takes the next number of the
document's ``attempts``; its status writes apply only while it is the latest run, so a run
that a newer one (a reindex of the document) or a switch to a new index overtook changes
nothing. ``spacio.rag.reindexing`` builds a space's new index with the same steps
(``index_document``).

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
from dataclasses import dataclass

import numpy as np
from flask import current_app
from sqlalchemy import delete, insert, select, update

from spacio.concurrency import in_real_thread, plugin_runner
from spacio.db import hold_owners, utcnow
from spacio.documents.models import Chunk, Document, DocumentFile, IndexBuild
from spacio.errors import PluginFailed, SpacioError, Unavailable
from spacio.extensions import db
from spacio.rag import contracts, registry
from spacio.rag.registry import Unusable
from spacio.spaces.models import Space
from spacio.usage.services import record_ingestion

log = logging.getLogger(__name__)

CHUNK_NAMESPACE = uuid.UUID("5b0c8a4e-3f8e-4d43-9c55-5d1f0a3a7c21")
PROGRESS_EVERY_S = 1.0


def namespace_of(space_id, recorded) -> str:
    """The vector-store namespace of a space's index: the one its pipeline records, or, for
    the index a space starts with, the space's id."""
    return (recorded or {}).get("namespace") or str(space_id)


def chunk_id(document_id, ordinal, namespace=None) -> uuid.UUID:
    """A chunk's id, stable for (namespace, document, ordinal); a space's first namespace
    (``namespace`` None) keeps the ids chunks had before reindexing built new ones."""
    return uuid.uuid5(CHUNK_NAMESPACE, f"{document_id}:{ordinal}" if namespace is None
                      else f"{namespace}/{document_id}:{ordinal}")


def chunking(space_settings, embedder, config=None):
    """(size, overlap) in tokens for a space: its settings, else the defaults, never more
    than the embedder reads."""
    config = config or current_app.config
    size = int(space_settings.get("chunk_size") or config["CHUNK_SIZE"])
    overlap = space_settings.get("chunk_overlap")
    overlap = int(config["CHUNK_OVERLAP"] if overlap is None else overlap)
    size = min(size, int(embedder.max_tokens))
    return size, min(overlap, size // 2 - 1 if size > 2 else 0)


class Permanent(Exception):
    """The document fails for good; ``crash`` when a plugin's bug, not the file, said so."""

    def __init__(self, reason, message, crash=False):
        super().__init__(message)
        self.reason, self.message, self.crash = reason, message, crash


class RetryLater(Exception):
    """Ingestion failed for a reason that may pass (already logged): try the document again."""


@dataclass(frozen=True)
class Target:
    """Where one run writes a document: an index (its namespace and plugins) of a space."""

    space_id: uuid.UUID
    namespace: str
    plugins: object  # spacio.rag.registry.Pipeline
    first: bool  # the space's first namespace: chunk ids without the namespace

    def chunk_id(self, document_id, ordinal):
        return chunk_id(document_id, ordinal, None if self.first else self.namespace)


def target(space_id, recorded) -> Target:
    """The index of a space that recorded ``recorded``; ``Unusable`` if its plugins cannot be built."""
    namespace = namespace_of(space_id, recorded)
    return Target(space_id, namespace, registry().resolve(recorded or {}), namespace == str(space_id))


@dataclass(frozen=True)
class Indexed:
    pages: int | None
    chunks: list
    tokens: int
    diagnostics: dict | None = None


MAX_SKIPPED_LISTED = 500


def diagnostics_of(parsed) -> dict | None:
    """A document's per-page diagnostics from its parser's page reports (None when it gave
    none): how many pages had a text layer, were recognised by OCR, or were skipped, and
    which were skipped and why."""
    reports = parsed.page_reports
    if not reports:
        return None
    count = {source: sum(1 for r in reports if r.source == source) for source in ("text", "ocr", "skipped")}
    return {"pages_with_text": count["text"], "pages_ocr": count["ocr"], "pages_skipped": count["skipped"],
            "skipped": [{"page": r.page, "reason": r.reason} for r in reports
                        if r.source == "skipped"][:MAX_SKIPPED_LISTED]}


def index_document(document_id, into: Target, settings, *, on_step=None):
    """Parse, chunk and embed a document with ``into``'s plugins and write its vectors into
    ``into``'s namespace (after deleting the document's old ones there). ``on_step(status,
    **values)`` hears "parsing", "embedding" and progress. Raises ``Permanent`` for what the
    file decides, ``PluginError`` for the services, None when the document is gone."""
    on_step = on_step or (lambda *args, **kwargs: None)
    doc = db.session.get(Document, document_id)
    if doc is None:
        db.session.rollback()
        return None
    parser = registry().parsers.get(doc.media_type)
    if parser is None:
        raise Permanent("unsupported_media_type", f"No installed parser reads {doc.media_type}.")
    plugins = into.plugins
    size, overlap = chunking(settings or {}, plugins.embedder)
    data = db.session.scalar(select(DocumentFile.data).where(DocumentFile.document_id == document_id))
    blob = contracts.Blob(data=data or b"", media_type=doc.media_type, filename=doc.filename,
                          max_pages=int(current_app.config["MAX_PAGES"]))
    del data
    parsed, chunks = _parse_and_chunk(plugins, parser, blob, size, overlap)
    del blob
    on_step("embedding", pages=parsed.pages, progress=0.0)
    vectors, tokens = _embed(plugins.embedder, [embedding_input(c, parsed.title) for c in chunks],
                             lambda done: on_step(None, progress=round(0.95 * done, 3)))
    records = [
        contracts.VectorRecord(
            id=str(into.chunk_id(document_id, c.ordinal)), document_id=str(document_id), ordinal=c.ordinal,
            text=c.text, vector=vectors[i], page=c.page, metadata={"heading": c.heading, "page_end": c.page_end})
        for i, c in enumerate(chunks)
    ]
    if db.session.scalar(select(Document.id).where(Document.id == document_id)) is None:
        db.session.rollback()
        return None  # deleted, alone or with its space, while we worked: write nothing
    db.session.rollback()  # no transaction stays open while the store is written
    # on a real thread unless the store says cpu_bound = False (pgvector: its pool's queues
    # belong to the gevent hub and break when a real thread uses them)
    store = plugins.vector_store
    plugin_runner(store)(_replace_vectors, store, into.namespace, int(plugins.embedder.dimensions),
                         str(document_id), records)
    return Indexed(parsed.pages, chunks, tokens, diagnostics_of(parsed))


def write_chunks(document_id, into: Target, chunks):
    """The document's chunks in ``into``'s namespace, replacing any it had there (in the
    caller's transaction)."""
    db.session.execute(delete(Chunk).where(Chunk.document_id == document_id, Chunk.namespace == into.namespace))
    db.session.execute(insert(Chunk), [
        {"id": into.chunk_id(document_id, c.ordinal), "space_id": into.space_id, "document_id": document_id,
         "namespace": into.namespace, "ordinal": c.ordinal, "page": c.page, "page_end": c.page_end,
         "heading": c.heading, "text": c.text, "tokens": c.tokens}
        for c in chunks
    ])


def ingest(document_id, *, last_try=False):
    document_id = uuid.UUID(str(document_id))
    doc = db.session.get(Document, document_id)
    if doc is None or doc.status in ("ready", "failed"):
        db.session.rollback()
        return  # deleted meanwhile, or already done (a message delivered twice)
    space = db.session.get(Space, doc.space_id)
    adopt_if_unrecorded(space)
    run = Run(document_id, doc.attempts + 1)
    space_id, recorded, settings = space.id, dict(space.pipeline or {}), dict(space.settings or {})
    if not run.claim():
        return  # another run took the document meanwhile
    try:
        into = target(space_id, recorded)
    except Unusable as exc:
        return run.fail("pipeline_changed", str(exc))
    started = time.monotonic()
    try:
        indexed = index_document(document_id, into, settings, on_step=run.step)
        if indexed is None:
            return
        _finish(run, into, indexed)
        log.info("ingested document %s: %d pages, %d chunks, %d tokens in %.1f s", document_id,
                 indexed.pages or 0, len(indexed.chunks), indexed.tokens, time.monotonic() - started)
    except Permanent as exc:
        run.fail(exc.reason, exc.message, crash=exc.__cause__ if exc.crash else None)
    except contracts.PluginError as exc:
        db.session.rollback()
        if exc.retryable and not last_try:
            log.warning("ingestion of %s will be retried: %s (%s)", document_id, exc.message, exc.reason)
            run.set(status="queued", progress=0.0)
            raise RetryLater(exc.reason) from exc
        run.fail(exc.reason, exc.message)
    except Exception as exc:
        db.session.rollback()
        if not last_try:
            log.warning("ingestion of %s failed; it will be retried", document_id, exc_info=True)
            run.set(status="queued", progress=0.0)
            raise RetryLater(exc.__class__.__name__) from exc
        run.fail("ingestion_error", "Ingestion failed unexpectedly; the server's log has the details.", crash=exc)


class Run:
    """One ingestion run of a document: number ``number`` of its ``attempts``. Its writes
    to the document apply only while no newer run (or a switch to a new index) took it."""

    def __init__(self, document_id, number):
        self.document_id, self.number = document_id, number

    def claim(self) -> bool:
        """Take the document (its attempts become this run's number): False if another run did."""
        return self._write(Document.attempts == self.number - 1, status="parsing", progress=0.0,
                           attempts=self.number, error_reason=None, error_message=None)

    def set(self, **values) -> bool:
        """Write ``values`` to the document if this run still owns it."""
        return self._write(Document.attempts == self.number, **values)

    def _write(self, owned, **values) -> bool:
        done = db.session.execute(update(Document).where(Document.id == self.document_id, owned)
                                  .values(updated_at=utcnow(), **values)).rowcount
        db.session.commit()
        return bool(done)

    def step(self, status, **values):
        self.set(**({"status": status} if status else {}), **values)

    def fail(self, reason, message, crash=None):
        """The document fails with ``reason``: one log line, with the traceback of ``crash``
        (an unexpected exception) when there is one."""
        db.session.rollback()
        if crash is None:
            log.info("document %s failed: %s", self.document_id, reason)
        else:
            log.error("document %s failed: %s", self.document_id, reason, exc_info=crash)
        self.set(status="failed", progress=0.0, error_reason=reason, error_message=message)


def _parse_and_chunk(plugins, parser, blob, size, overlap):
    """Parse and chunk on a real thread. These plugins only see the file, so whatever they
    raise is a property of the file: permanent."""

    def work():
        parsed = parser.parse(blob)
        if parsed.pages is not None and parsed.pages > (blob.max_pages or parsed.pages):
            raise contracts.InvalidInput(f"The document has {parsed.pages} pages; the limit is {blob.max_pages}.",
                                         reason="too_many_pages")
        if not any(section.text.strip() for section in parsed.sections):
            raise contracts.InvalidInput("The document contains no text.", reason="empty_document")
        chunks = list(plugins.chunker.chunk(parsed, tokenizer=plugins.embedder.tokenizer, size=size,
                                            overlap=overlap))
        if not chunks:
            raise contracts.InvalidInput("The document contains no text.", reason="empty_document")
        return parsed, chunks

    try:
        return in_real_thread(work)
    except contracts.UpstreamUnavailable:
        raise
    except contracts.PluginError as exc:
        raise Permanent(exc.reason, exc.message) from exc
    except Exception as exc:  # a parser bug on a strange file fails that file, not the worker
        raise Permanent("parser_error", f"The file could not be read ({exc.__class__.__name__}).",
                        crash=True) from exc


def embedding_input(chunk, title):
    """What the embedder reads for a chunk: the chunk's text under its document's title and
    its heading path, each unless the text already begins with it. A chunk from the middle
    of a document is then also found by what the whole document is about (SciFact train,
    vector-only nDCG@10 0.6686 -> 0.6775 with titles). Stores and citations keep the chunk's
    own text; keyword search reads only that."""
    context = [label for label in dict.fromkeys((title, chunk.heading)) if label and not chunk.text.startswith(label)]
    return "\n\n".join([*context, chunk.text])


def _embed(embedder, texts, progress):
    """Vectors of ``texts`` in batches; ``progress(share done)`` about once a second. Vectors of
    other dimensions than the embedder says (a model changed behind its name) fail the
    document: ``pipeline_changed``, nothing is written."""
    batch = max(1, min(int(current_app.config["EMBED_BATCH_SIZE"]), int(embedder.max_batch_size)))
    parts, tokens, last_report = [], 0, time.monotonic()
    for start in range(0, len(texts), batch):
        result = in_real_thread(embedder.embed_documents, texts[start:start + batch])
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if vectors.shape != (len(texts[start:start + batch]), int(embedder.dimensions)):
            raise Permanent("pipeline_changed", f"The embedder {embedder.model!r} returned vectors of shape "
                            f"{vectors.shape}, not {int(embedder.dimensions)} dimensions as the space recorded; "
                            f"reindex the space.")
        parts.append(vectors)
        tokens += int(result.tokens)
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            progress((start + batch) / len(texts))
            last_report = time.monotonic()
    return np.concatenate(parts), tokens


def _replace_vectors(store, namespace, dimensions, document_id, records):
    """Delete the document's old vectors, then write the new ones (ids are stable, so a
    crash between the two is repaired by the next run)."""
    store.ensure_namespace(namespace, dimensions)
    store.delete_document(namespace, document_id)
    store.upsert(namespace, records)


def _finish(run, into, indexed):
    """Mark the document ready and write its chunks and the uploader's usage, in one
    transaction. Rows are locked top down, as requests lock them (the uploader, the space, the
    document, its chunks): deleting the account or the space, or reindexing the space, waits
    for this transaction or runs before it, never deadlocks with it.

    The document, or its whole space, may have been deleted since the vectors were written:
    then they are taken back out, and with the space its namespace, which writing recreated
    after the delete had dropped it. A delete that commits after this check removes the
    vectors again itself (``forget_deleted``). A newer run may have taken the document, or the
    space switched to a new index: then this run's vectors are the newer run's too (the same
    ids), or in a namespace nothing uses any more, which goes."""
    document_id = run.document_id
    uploader = select(Document.uploaded_by).where(Document.id == document_id).scalar_subquery()
    space_alive = hold_owners(uploader, into.space_id)
    recorded = db.session.scalar(select(Space.pipeline).where(Space.id == into.space_id)) if space_alive else None
    current = space_alive and namespace_of(into.space_id, recorded) == into.namespace
    done = current and db.session.execute(
        update(Document).where(Document.id == document_id, Document.attempts == run.number)
        .values(status="ready", progress=1.0, pages=indexed.pages, chunks=len(indexed.chunks),
                tokens=indexed.tokens, diagnostics=indexed.diagnostics, updated_at=utcnow())
    ).rowcount
    if not done:
        gone = current and db.session.scalar(select(Document.id).where(Document.id == document_id)) is None
        db.session.rollback()
        store = into.plugins.vector_store
        if not current:  # the space is gone, or moved to a new index: this namespace is dead
            plugin_runner(store)(store.drop_namespace, into.namespace)
        elif gone:
            plugin_runner(store)(store.delete_document, into.namespace, str(document_id))
        return
    write_chunks(document_id, into, indexed.chunks)
    record_ingestion(document_id, indexed.tokens)  # the uploader's usage: embedding tokens of this run
    db.session.commit()


def _indexes(space_id, recorded):
    """The targets a space writes: its index, and the one a reindex is building beside it
    (each only if its plugins can be built here)."""
    found = []
    pipelines = [recorded] + list(db.session.scalars(
        select(IndexBuild.pipeline).where(IndexBuild.space_id == space_id, IndexBuild.status == "building")))
    for pipeline in pipelines:
        try:
            found.append(target(space_id, pipeline))
        except Unusable:
            log.warning("the vectors of space %s in %s cannot be reached here", space_id,
                        namespace_of(space_id, pipeline))
    return found


def forget_document(space, document_id):
    """Remove a document's vectors from the space's indexes (before its rows are deleted).
    Returns the targets, for ``forget_deleted`` after the commit."""
    indexes = _indexes(space.id, space.pipeline)
    for into in indexes:
        plugin_call(into.plugins.vector_store.delete_document, into.namespace, str(document_id))
    return indexes


def forget_space(space):
    """Remove a space's vectors: every namespace it has (before its rows are deleted). Returns
    the targets, for ``forget_deleted`` after the commit."""
    indexes = _indexes(space.id, space.pipeline)
    for into in indexes:
        plugin_call(into.plugins.vector_store.drop_namespace, into.namespace)
    return indexes


def forget_deleted(indexes, document_id=None):
    """Remove a deleted space's vectors, or one deleted document's, once more after the delete
    committed. Ingestion may have written them between the first removal and the commit, and
    then still found its document (``_finish``); one that looks after the commit finds it gone
    and removes them itself. (A lock cannot keep ingestion out meanwhile: SQLite has no row
    locks, and the request cannot hold the whole file while the local store, which writes that
    same file, removes the vectors.) Best effort: the rows are gone and the request succeeds,
    so a store that fails now is only logged."""
    for into in indexes:
        store = into.plugins.vector_store
        try:
            if document_id is None:
                store.drop_namespace(into.namespace)
            else:
                store.delete_document(into.namespace, str(document_id))
        except Exception:
            log.warning("could not remove the vectors of deleted %s %s again", "space" if document_id is None
                        else "document", document_id or into.space_id, exc_info=True)



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
