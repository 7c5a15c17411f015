"""The contract test suite every ``spacio.rerankers`` plugin should pass.

Subclass it in a test module and provide a ``reranker`` fixture::

    import pytest
    from spacio.testing.contracts.reranker import RerankerContract

    class TestMyReranker(RerankerContract):
        @pytest.fixture
        def reranker(self, reranker_options):
            return MyReranker(**reranker_options)

        @pytest.fixture
        def reranker_options(self):  # only if your class needs options
            return {"api_key": "...", "base_url": stand_in_url}

``reranker_options`` (default ``{}``) are the keyword options the construction checks
build a second instance of ``type(reranker)`` with.

What is checked:

- ``rerank(question, hits, limit)`` returns a list of the input hits (a subset, each at most
  once, every field but ``score`` unchanged), at most ``limit`` of them, best first: scores
  are finite floats that never increase down the list;
- it returns ``min(limit, len(hits))`` hits (set ``returns_all = False`` if your reranker
  may drop hits it judges irrelevant);
- no hits, or ``limit`` 0, gives ``[]``; the input sequence is not modified;
- the hit that answers the question comes first (``relevance_cases``: the defaults share
  words with their question, so a lexical reranker passes too); two hits with the same
  text are two results; the order is deterministic;
- ``options_schema``, when there is one, is a marshmallow Schema class that accepts
  ``reranker_options`` and refuses an unknown option; constructing does no network I/O.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from typing import ClassVar

import pytest

from spacio.rag.contracts import Hit, Reranker

__all__ = ["RerankerContract", "RELEVANCE_CASES", "hits_of"]

#: ``(question, the text that answers it, texts that do not)``
RELEVANCE_CASES: list[tuple[str, str, list[str]]] = [
    ("How tall is the Eiffel Tower?",
     "The Eiffel Tower in Paris is 330 metres tall.",
     ["Bananas are rich in potassium.", "The Great Wall of China is very long.",
      "Tall ships sailed into the harbour at dawn."]),
    ("What is the boiling point of water?",
     "The boiling point of water is 100 degrees Celsius at sea level.",
     ["Penguins live in the southern hemisphere.", "The stock market fell sharply on Tuesday.",
      "A good story makes its point early."]),
]


def hits_of(texts: list[str], prefix: str = "hit") -> list[Hit]:
    """Hits in retrieval order (descending score) for ``texts``, with pages and metadata."""
    return [Hit(id=f"{prefix}-{i}", document_id=f"doc-{i % 3}", ordinal=i, text=text, score=1.0 - i / 100,
                page=i + 1 if i % 2 else None, metadata={"filename": f"file-{i}.txt"})
            for i, text in enumerate(texts)]


class RerankerContract:
    """Behaviour the host relies on. Provide a ``reranker`` fixture in the subclass."""

    relevance_cases: ClassVar[list[tuple[str, str, list[str]]]] = RELEVANCE_CASES
    returns_all: ClassVar[bool] = True

    @pytest.fixture
    def reranker_options(self):
        """Keyword options that build ``type(reranker)``; override if it needs any."""
        return {}

    # ------------------------------------------------------------------ helpers

    def check_reranked(self, hits: list[Hit], result, limit: int) -> list[Hit]:
        """``result`` is a best-first subset of ``hits``, at most ``limit`` long."""
        assert isinstance(result, list), f"rerank must return a list, got {type(result).__name__}"
        assert len(result) <= limit, f"{len(result)} hits for limit {limit}"
        if self.returns_all:
            assert len(result) == min(limit, len(hits)), \
                f"{len(result)} hits of {len(hits)} for limit {limit} (set returns_all = False if that is meant)"
        by_id = {hit.id: hit for hit in hits}
        seen = set()
        for i, hit in enumerate(result):
            assert isinstance(hit, Hit), f"item {i} is a {type(hit).__name__}, not a Hit"
            assert hit.id in by_id, f"item {i} ({hit.id!r}) is not one of the input hits"
            assert hit.id not in seen, f"{hit.id!r} is returned twice"
            seen.add(hit.id)
            assert dataclasses.replace(by_id[hit.id], score=hit.score) == hit, \
                f"{hit.id!r} changed beyond its score: {hit!r}"
            assert isinstance(hit.score, float) and math.isfinite(hit.score), \
                f"{hit.id!r} has a score that is not a finite float: {hit.score!r}"
        scores = [hit.score for hit in result]
        assert scores == sorted(scores, reverse=True), f"not best first: scores {scores}"
        return result

    # ------------------------------------------------------------------ shape

    def test_implements_the_protocol(self, reranker):
        assert isinstance(reranker, Reranker), "does not implement spacio.rag.contracts.Reranker"

    def test_no_hits_or_no_room_gives_nothing(self, reranker):
        assert reranker.rerank("anything at all?", [], 5) == []
        assert reranker.rerank("anything at all?", hits_of(["some text"]), 0) == []

    def test_a_best_first_subset_of_at_most_limit(self, reranker):
        question, answer, others = self.relevance_cases[0]
        hits = hits_of(others + [answer])
        for limit in (1, 2, len(hits), len(hits) + 5):
            self.check_reranked(hits, reranker.rerank(question, hits, limit), limit)

    def test_one_hit(self, reranker):
        hits = hits_of(["The only passage there is."])
        (hit,) = self.check_reranked(hits, reranker.rerank("Which passage is there?", hits, 3), 3)
        assert hit.id == hits[0].id

    def test_input_is_not_modified_and_any_sequence_works(self, reranker):
        question, answer, others = self.relevance_cases[0]
        hits = hits_of(others + [answer])
        before = list(hits)
        from_list = reranker.rerank(question, hits, 3)
        assert hits == before, "rerank modified the list it was given"
        from_tuple = reranker.rerank(question, tuple(hits), 3)
        assert [h.id for h in from_tuple] == [h.id for h in from_list]

    # ------------------------------------------------------------------ ranking

    def test_the_answer_comes_first(self, reranker):
        for question, answer, others in self.relevance_cases:
            for hits in (hits_of(others + [answer]), hits_of([answer] + others)):
                ranked = self.check_reranked(hits, reranker.rerank(question, hits, len(hits)), len(hits))
                assert ranked[0].text == answer, \
                    f"{question!r}: {ranked[0].text!r} ranked above the answer {answer!r}"

    def test_same_text_twice_is_two_results(self, reranker):
        question, answer, others = self.relevance_cases[0]
        hits = hits_of([answer, others[0], answer])
        ranked = self.check_reranked(hits, reranker.rerank(question, hits, 3), 3)
        assert {hit.id for hit in ranked[:2]} == {hits[0].id, hits[2].id}, \
            "two hits with the answer's text must be the top two (results are matched by position, not text)"

    def test_deterministic(self, reranker):
        question, answer, others = self.relevance_cases[-1]
        hits = hits_of(others + [answer])
        first = [(h.id, h.score) for h in reranker.rerank(question, hits, len(hits))]
        second = [(h.id, h.score) for h in reranker.rerank(question, hits, len(hits))]
        assert [i for i, _ in first] == [i for i, _ in second]
        assert all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4) for (_, a), (_, b) in zip(first, second))

    # ------------------------------------------------------------------ construction

    def test_options_schema(self, reranker, reranker_options):
        import marshmallow

        schema = getattr(type(reranker), "options_schema", None)
        if schema is None:
            assert reranker_options == {}, "options without an options_schema: the host refuses every option"
            return
        assert isinstance(schema, type) and issubclass(schema, marshmallow.Schema), \
            "options_schema must be a marshmallow Schema class (not an instance)"
        schema().load(reranker_options)
        with pytest.raises(marshmallow.ValidationError):
            schema().load({**reranker_options, "no_such_option_xyz": "1"})

    def test_constructor_does_no_network_io(self, reranker, reranker_options, monkeypatch):
        def refuse(*args, **kwargs):
            raise AssertionError("the constructor opened a connection: connect lazily, on first use")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        instance = type(reranker)(**reranker_options)
        assert isinstance(instance, Reranker)
