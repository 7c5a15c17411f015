"""Reciprocal rank fusion: merge ranked hit lists whose scores are not comparable.

A cosine similarity and a bm25 / ts_rank_cd score live on different scales, so hybrid
search fuses *ranks*: each list contributes ``weight / (k + rank)`` (rank 1-based) to every
hit it contains (Cormack, Clarke & Büttcher 2009; k=60 is their constant). Only ranks
matter, so the lists need no normalisation and a hit found by both lists rises above hits
found by one.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from spacio.rag.contracts import Hit


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], *, k: int = 60,
                           weights: Sequence[float] | None = None, limit: int) -> list[Hit]:
    """Fuse ``rankings`` (each best first) into one list of at most ``limit`` hits, best first.

    Hits are identified by ``id``; the returned hit is the one from the first list that
    contains it, with the fused score in ``score``. A hit repeated inside one list counts
    once, at its best rank. Ties are broken by the best rank reached in any list, then by
    the order of the lists, then by id, so equal inputs always give the same output.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    if weights is None:
        weights = [1.0] * len(rankings)
    elif len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if limit <= 0:
        return []

    scores: dict[str, float] = {}
    first_seen: dict[str, tuple[int, int, Hit]] = {}  # id -> (best rank, list index, hit)
    for list_index, (ranking, weight) in enumerate(zip(rankings, weights)):
        seen_here: set[str] = set()
        for rank, hit in enumerate(ranking, start=1):
            if hit.id in seen_here:
                continue
            seen_here.add(hit.id)
            scores[hit.id] = scores.get(hit.id, 0.0) + weight / (k + rank)
            known = first_seen.get(hit.id)
            if known is None:
                first_seen[hit.id] = (rank, list_index, hit)
            elif rank < known[0]:
                first_seen[hit.id] = (rank, known[1], known[2])

    order = sorted(scores, key=lambda i: (-scores[i], first_seen[i][0], first_seen[i][1], i))
    return [dataclasses.replace(first_seen[i][2], score=scores[i]) for i in order[:limit]]
