"""``CohereReranker``: Cohere's rerank models through ``cohere.ClientV2.rerank`` (API v2)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from marshmallow import fields, validate

from spacio.rag.contracts import Hit, InvalidInput, UpstreamUnavailable

from ._calls import CohereCaller, CohereOptions

DEFAULT_MODEL = "rerank-v3.5"
#: documents per request: more is allowed but Cohere advises against it. Scores are per
#: (query, document) pair, so batches rank together.
BATCH_SIZE = 1000
#: the longest Retry-After slept through; a person is waiting for the answer
INTERACTIVE_MAX_SLEEP = 10.0


class CohereRerankerOptions(CohereOptions):
    """``model`` is any Cohere rerank model id; ``max_tokens_per_doc`` truncates long hits
    (None: the API's default, 4096)."""

    model = fields.String(load_default=DEFAULT_MODEL, validate=validate.Length(min=1))
    max_tokens_per_doc = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    max_retries = fields.Integer(load_default=2, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=0.5, validate=validate.Range(min=0))


class CohereReranker:
    """Returns the hits best first with ``score`` set to Cohere's ``relevance_score``
    (0..1), at most ``limit`` of them; every other field of a hit is kept. No request for
    no hits or ``limit`` 0. Errors are mapped like the other Cohere plugins (429/5xx/
    timeouts retried, then ``UpstreamUnavailable``). No I/O before the first call."""

    options_schema = CohereRerankerOptions

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        self.max_tokens_per_doc: int | None = opts["max_tokens_per_doc"]
        self._caller = CohereCaller(api_key=opts["api_key"], base_url=opts["base_url"], timeout=opts["timeout"],
                                    max_retries=opts["max_retries"], backoff=opts["backoff"],
                                    max_sleep=INTERACTIVE_MAX_SLEEP)

    def __repr__(self) -> str:  # never show the key
        return f"CohereReranker(model={self.model!r})"

    def rerank(self, question: str, hits: Sequence[Hit], limit: int) -> list[Hit]:
        hits = list(hits)
        if not hits or limit <= 0:
            return []
        if not question.strip():
            raise InvalidInput("the question is empty", reason="empty_question")
        scored: list[tuple[float, int]] = []
        for start in range(0, len(hits), BATCH_SIZE):
            batch = hits[start:start + BATCH_SIZE]
            scored += [(score, start + index) for score, index in self._scores(question, batch, limit)]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))  # ties keep the retrieval order
        return [dataclasses.replace(hits[index], score=score) for score, index in scored[:limit]]

    def _scores(self, question: str, batch: list[Hit], limit: int) -> list[tuple[float, int]]:
        """``(relevance_score, index in batch)`` of the batch's best ``limit`` hits."""
        extra = {"max_tokens_per_doc": self.max_tokens_per_doc} if self.max_tokens_per_doc else {}
        response = self._caller.call("rerank", lambda client: client.rerank(
            model=self.model, query=question, documents=[hit.text for hit in batch],
            top_n=min(limit, len(batch)), **extra))
        results = getattr(response, "results", None)
        if not isinstance(results, list):
            raise UpstreamUnavailable("Cohere rerank returned no results", reason="upstream_bad_response")
        scores: list[tuple[float, int]] = []
        seen: set[int] = set()
        for result in results:
            index, score = getattr(result, "index", None), getattr(result, "relevance_score", None)
            if not (isinstance(index, int) and 0 <= index < len(batch) and index not in seen
                    and isinstance(score, (int, float)) and math.isfinite(score)):
                raise UpstreamUnavailable(f"Cohere rerank returned a malformed result for {len(batch)} documents: "
                                          f"index {index!r}, relevance_score {score!r}",
                                          reason="upstream_bad_response")
            seen.add(index)
            scores.append((float(score), index))
        return scores
