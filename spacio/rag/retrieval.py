"""Retrieval: a question -> the space's best chunks, with the document and page they come from.

``retrieve(space, question, top_k=, mode=)``:

1. embed the question (the embedder's query input type) and search the space's namespace
   by vector, and search it by keywords: two separate ``store.search`` calls, so fusion is
   the same for every vector store. Under gevent both run at once; a plugin runs on a real
   thread unless it declares ``cpu_bound = False`` (``plugin_runner``). No pooled database
   connection is held meanwhile;
2. fuse the two rankings (``spacio.rag.fusion.fuse``; method, weights and depth are config,
   tuned on SciFact train by ``bench/quality.py --tune``);
3. drop hits of documents deleted meanwhile, optionally rerank with ``SPACIO_RERANKER``,
   and keep the ``top_k`` best.

``grounded`` says whether anything relevant was found: the best cosine similarity of the
question to a chunk of the space reaches a threshold calibrated for the space's embedder
(its ``grounded_min_similarity``; ``bench/quality.py --calibrate``), unless
``GROUNDED_MIN_SIMILARITY`` sets one for every embedder; never a prompt instruction. A
keyword-only search does not embed the question, so it has no cosine: it is grounded when a
hit holds enough of the question's words (``GROUNDED_MIN_KEYWORD_COVERAGE``).

A vector store without keyword search (``keyword_search = False``) answers hybrid and
keyword searches from its vectors: each hit says which ``mode`` found it.

Plugin failures become the one error body: a service down 503, anything else 502.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from flask import current_app
from sqlalchemy import Uuid, any_, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from spacio.concurrency import gevent_active, plugin_runner
from spacio.documents.models import Document
from spacio.errors import Conflict
from spacio.extensions import db
from spacio.rag import registry
from spacio.rag.builtins.local_store import STOPWORDS  # English function words, as keyword search drops them
from spacio.rag.contracts import Hit
from spacio.rag.fusion import fuse
from spacio.rag.pipeline import adopt_if_unrecorded, namespace_of, plugin_call
from spacio.rag.registry import Unusable

MODES = ("hybrid", "vector", "keyword")
# below this best cosine nothing counts as relevant, for an embedder that declares no calibrated
# threshold of its own (the value calibrated for `local`, all-MiniLM-L6-v2)
UNCALIBRATED_MIN_SIMILARITY = 0.39


@dataclass(frozen=True)
class Retrieved:
    chunk_id: str
    document_id: str
    filename: str
    ordinal: int
    text: str
    score: float  # higher is better; fused hybrid scores are not cosines
    page: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    mode: str = "hybrid"  # the search that found it: hybrid, vector or keyword


@dataclass(frozen=True)
class Retrieval:
    hits: list[Retrieved]
    grounded: bool  # something relevant enough was found
    embedding_tokens: int  # spent on the question
    best_similarity: float | None = None  # best cosine of the question to a chunk; None in keyword mode
    mode: str = "hybrid"  # the search that ran
    asked: str = "hybrid"  # the search asked for (a store without keyword search runs "vector")


@dataclass(frozen=True)
class Settings:
    """The tunables of ``rank``, read from the app's config by ``settings``."""

    candidates: int = 100
    fusion: str = "convex"
    vector_weight: float = 0.5
    document_weight: float = 0.5
    rrf_k: float = 60
    min_similarity: float | None = None  # None: the embedder's own calibrated threshold
    min_keyword_coverage: float = 0.55
    rerank_candidates: int = 50


def settings(config=None) -> Settings:
    config = config or current_app.config
    return Settings(candidates=int(config["SEARCH_CANDIDATES"]), fusion=str(config["SEARCH_FUSION"]),
                    vector_weight=float(config["SEARCH_VECTOR_WEIGHT"]),
                    document_weight=float(config["SEARCH_DOCUMENT_WEIGHT"]), rrf_k=float(config["SEARCH_RRF_K"]),
                    min_similarity=_float_or_none(config.get("GROUNDED_MIN_SIMILARITY")),
                    min_keyword_coverage=float(config["GROUNDED_MIN_KEYWORD_COVERAGE"]),
                    rerank_candidates=int(config["RERANK_CANDIDATES"]))


def _float_or_none(value):
    return None if value is None or value == "" else float(value)


def min_similarity(embedder, tuned: Settings) -> float:
    """The grounded threshold: the configured one, else the embedder's calibrated one."""
    if tuned.min_similarity is not None:
        return tuned.min_similarity
    own = getattr(embedder, "grounded_min_similarity", None)
    return float(own) if own is not None else UNCALIBRATED_MIN_SIMILARITY


def retrieve(space, question: str, *, top_k: int = 10, mode: str = "hybrid") -> Retrieval:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    reg = registry()
    adopt_if_unrecorded(space)
    try:
        plugins = reg.resolve(space.pipeline or {})
    except Unusable as exc:
        raise Conflict(str(exc), reason="pipeline_changed") from None
    tuned = settings()
    namespace, space_id = namespace_of(space.id, space.pipeline), space.id
    store, embedder = plugins.vector_store, plugins.embedder
    tuned = dataclasses.replace(tuned, min_similarity=min_similarity(embedder, tuned))
    asked = mode
    if not getattr(store, "keyword_search", True):
        mode = "vector"  # the store has vectors only: the same question, answered by them
    depth = max(top_k, tuned.candidates)
    _release_connection()

    def by_vector():
        embedded = plugin_call(plugin_runner(embedder), embedder.embed_query, question, what="The embedder")
        hits = plugin_call(plugin_runner(store), store.search, namespace, vector=embedded.vectors[0], limit=depth)
        return hits, int(embedded.tokens)

    def by_text():
        return plugin_call(plugin_runner(store), store.search, namespace, text=question, limit=depth)

    (vector_hits, tokens), text_hits = _concurrently(
        by_vector if mode != "keyword" else (lambda: ([], 0)),
        by_text if mode != "vector" else list)
    alive = _alive_documents(space_id, {h.document_id for h in (*vector_hits, *text_hits)})
    vector_hits = [h for h in vector_hits if h.document_id in alive]
    text_hits = [h for h in text_hits if h.document_id in alive]

    reranker = None
    if reg.reranker is not None:
        def reranker(hits, limit):
            return plugin_call(plugin_runner(reg.reranker), reg.reranker.rerank, question, hits, limit,
                               what="The reranker")
    hits = rank(vector_hits, text_hits, mode=mode, top_k=top_k, tuned=tuned, rerank=reranker)
    best = max((h.score for h in vector_hits), default=None) if mode != "keyword" else None
    found = grounded(mode, question, best, text_hits, tuned)
    return Retrieval(hits=[_retrieved(h, alive[h.document_id], mode) for h in hits if h.document_id in alive],
                     grounded=found, embedding_tokens=tokens, best_similarity=best, mode=mode, asked=asked)


def rank(vector_hits: Sequence[Hit], text_hits: Sequence[Hit], *, mode: str, top_k: int, tuned: Settings,
         rerank: Callable[[list[Hit], int], list[Hit]] | None = None) -> list[Hit]:
    """The ``top_k`` best hits of a search, best first, from the store's two rankings."""
    if mode == "vector":
        hits = list(vector_hits)
    elif mode == "keyword":
        hits = list(text_hits)
    else:
        weights = [tuned.vector_weight, 1.0 - tuned.vector_weight]
        hits = fuse([vector_hits, text_hits], method=tuned.fusion, weights=weights, k=tuned.rrf_k,
                    document_weight=tuned.document_weight, limit=max(top_k, tuned.candidates))
    if rerank is not None and hits:
        hits = rerank(hits[:max(top_k, tuned.rerank_candidates)], top_k)
    return list(hits[:top_k])


def grounded(mode: str, question: str, best_similarity: float | None, text_hits: Sequence[Hit],
             tuned: Settings) -> bool:
    """Whether the search found something relevant enough to answer from.

    With a question embedding: its best cosine to any chunk reaches the calibrated
    ``min_similarity``. Keyword-only: one of the first ten hits holds at least
    ``min_keyword_coverage`` of the question's content words (a weaker signal: it told
    SciFact claims from off-topic questions with 81 % balanced accuracy, the cosine 99 %)."""
    if mode != "keyword":
        return best_similarity is not None and best_similarity >= tuned.min_similarity
    return bool(text_hits) and max(coverage(question, h.text) for h in text_hits[:10]) >= tuned.min_keyword_coverage


_WORD = re.compile(r"\w+")


def content_words(text: str) -> set[str]:
    words = _WORD.findall(unicodedata.normalize("NFC", text).lower())
    return {w for w in words if w not in STOPWORDS and len(w) > 1}


def coverage(question: str, text: str) -> float:
    """Share of the question's content words found in ``text``; a word counts when a word
    of the text starts with its first five letters (a poor man's stemmer: cells/cellular,
    role/roles)."""
    wanted = content_words(question)
    if not wanted:
        return 0.0
    have = {w[:n] for w in content_words(text) for n in range(1, 6)}
    return sum(1 for w in wanted if w[:5] in have) / len(wanted)


def _release_connection() -> None:
    """Give the session's pooled connection back while the plugins embed and search, so a
    request waiting on them (many streams at once, a slow service) holds none; the next
    query takes one again. The caller's objects stay usable with what they have loaded.
    A session with unsaved changes is left as it is."""
    session = db.session
    if not (session.new or session.dirty or session.deleted):
        session.close()


def _concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at once under gevent (each blocks on a real thread), else in turn.
    The first exception raised is re-raised once all have finished."""
    if not gevent_active() or len(calls) < 2:
        return [call() for call in calls]
    import gevent

    jobs = [gevent.spawn(call) for call in calls]
    gevent.joinall(jobs)
    return [job.get() for job in jobs]


def _alive_documents(space_id, document_ids: set[str]) -> dict[str, str]:
    """{document id: filename} of the documents that still exist in the space."""
    if not document_ids:
        return {}
    ids = []
    for value in document_ids:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:  # not one of ours: cannot be a document of the space
            continue
    if not ids:
        return {}
    if db.session.get_bind().dialect.name == "postgresql":  # one array parameter, not one per id
        matching = Document.id == any_(literal(ids, ARRAY(Uuid)))
    else:
        matching = Document.id.in_(ids)
    rows = db.session.execute(select(Document.id, Document.filename)
                              .where(Document.space_id == space_id, matching)).all()
    return {str(i): name for i, name in rows}


def _retrieved(hit: Hit, filename: str, mode: str) -> Retrieved:
    return Retrieved(chunk_id=hit.id, document_id=hit.document_id, filename=filename, ordinal=hit.ordinal,
                     text=hit.text, score=float(hit.score), page=hit.page, metadata=dict(hit.metadata or {}),
                     mode=mode)
