"""Fusion: merge ranked hit lists (vector and keyword search) into one ranking.

Two ways to put a cosine and a bm25 score on one scale:

- **Reciprocal rank fusion** (Cormack, Clarke & Büttcher 2009): each list contributes
  ``weight / (k + rank)`` (rank 1-based) to every hit it contains. Only ranks matter, so
  no normalisation is needed; ``reciprocal_rank_fusion`` (the stores' own hybrid search).
- **Convex combination of normalised scores** (Bruch, Gai & Ingber 2023, "An Analysis of
  Fusion Functions for Hybrid Retrieval"): each list's scores are min-max normalised over
  the list, ``(score - min) / (max - min)``, and summed with weights. It keeps how much
  better the first hit is than the tenth, which ranks throw away; a hit missing from a list
  scores 0 there (it was below that list's last candidate).

``fuse`` does either, at chunk level or with document evidence: a chunk's fused score is
``(1 - document_weight) * its own evidence + document_weight * its document's``, where a
document's evidence in a list is that of its best chunk there. A document whose abstract
the embedder finds through one chunk and the keywords through another is then seen as
found by both. ``document_weight=0`` is plain chunk-level fusion.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from spacio.rag.contracts import Hit

METHODS = ("rrf", "convex")


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], *, k: int = 60,
                           weights: Sequence[float] | None = None, limit: int) -> list[Hit]:
    """Fuse ``rankings`` (each best first) into one list of at most ``limit`` hits, best first.

    Hits are identified by ``id``; the returned hit is the one from the first list that
    contains it, with the fused score in ``score``. A hit repeated inside one list counts
    once, at its best rank. Ties are broken by the best rank reached in any list, then by
    the order of the lists, then by id, so equal inputs always give the same output.
    """
    return fuse(rankings, method="rrf", k=k, weights=weights, limit=limit)


def fuse(rankings: Sequence[Sequence[Hit]], *, method: str = "rrf", weights: Sequence[float] | None = None,
         k: float = 60, document_weight: float = 0.0, limit: int) -> list[Hit]:
    """Fuse ``rankings`` (each best first) into at most ``limit`` hits, best first.

    ``method``: ``rrf`` (``weight / (k + rank)``) or ``convex`` (weighted sum of min-max
    normalised scores). ``document_weight`` (0..1): the share of a chunk's score that comes
    from its document's best chunk in each list. Hits are identified by ``id``; the returned
    hit is the first list's copy, with the fused score; a hit repeated in one list counts
    once, at its best rank. Ties: best rank in any list, then list order, then id.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if k < 0:
        raise ValueError("k must be >= 0")
    if not 0.0 <= document_weight <= 1.0:
        raise ValueError("document_weight must be between 0 and 1")
    if weights is None:
        weights = [1.0] * len(rankings)
    elif len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if limit <= 0:
        return []

    chunk_scores: dict[str, float] = {}
    document_scores: dict[str, float] = {}
    first_seen: dict[str, tuple[int, int, Hit]] = {}  # id -> (best rank, list index, hit)
    for list_index, (ranking, weight) in enumerate(zip(rankings, weights)):
        unique = _unique(ranking)
        evidence = _evidence(unique, method, k)
        best_of_document: dict[str, float] = {}
        for rank, (hit, value) in enumerate(zip(unique, evidence), start=1):
            chunk_scores[hit.id] = chunk_scores.get(hit.id, 0.0) + weight * value
            if value > best_of_document.get(hit.document_id, -1.0):
                best_of_document[hit.document_id] = value
            known = first_seen.get(hit.id)
            if known is None:
                first_seen[hit.id] = (rank, list_index, hit)
            elif rank < known[0]:
                first_seen[hit.id] = (rank, known[1], known[2])
        for document, value in best_of_document.items():
            document_scores[document] = document_scores.get(document, 0.0) + weight * value

    def fused(hit_id: str) -> float:
        own = chunk_scores[hit_id]
        if not document_weight:
            return own
        return (1.0 - document_weight) * own + document_weight * document_scores[first_seen[hit_id][2].document_id]

    scores = {hit_id: fused(hit_id) for hit_id in chunk_scores}
    order = sorted(scores, key=lambda i: (-scores[i], first_seen[i][0], first_seen[i][1], i))
    return [dataclasses.replace(first_seen[i][2], score=scores[i]) for i in order[:limit]]


def _unique(ranking: Sequence[Hit]) -> list[Hit]:
    """The hits of one list in order, each id once (at its best rank)."""
    seen: set[str] = set()
    unique = []
    for hit in ranking:
        if hit.id not in seen:
            seen.add(hit.id)
            unique.append(hit)
    return unique


def _evidence(ranking: list[Hit], method: str, k: float) -> list[float]:
    """Each hit's contribution from one list, before weighting."""
    if method == "rrf":
        return [1.0 / (k + rank) for rank in range(1, len(ranking) + 1)]
    if not ranking:
        return []
    scores = [float(h.score) for h in ranking]
    low, high = min(scores), max(scores)
    if high <= low:  # one hit, or all equal: all as good as the best
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]
