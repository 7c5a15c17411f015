"""The reranker contract passes a correct reranker and catches ones that break the rules
the host relies on. (The first-party reranker, ``cohere``, runs it in its plugin's tests.)"""

import dataclasses
import re

import pytest

from spacio.testing.contracts.reranker import RELEVANCE_CASES, RerankerContract, hits_of


class WordOverlapReranker:
    """Score = the share of the question's words found in the hit: a correct reranker."""

    def rerank(self, question, hits, limit):
        words = set(re.findall(r"\w+", question.lower()))
        scored = [dataclasses.replace(hit, score=len(words & set(re.findall(r"\w+", hit.text.lower())))
                                      / max(len(words), 1)) for hit in hits]
        return sorted(scored, key=lambda hit: -hit.score)[:max(limit, 0)]


class TestWordOverlapRerankerContract(RerankerContract):
    @pytest.fixture
    def reranker(self):
        return WordOverlapReranker()


CONTRACT = RerankerContract()


class Ascending(WordOverlapReranker):
    def rerank(self, question, hits, limit):
        return super().rerank(question, hits, len(hits))[::-1][:limit]


class IgnoresLimit(WordOverlapReranker):
    def rerank(self, question, hits, limit):
        return super().rerank(question, hits, len(hits))


class ByText(WordOverlapReranker):
    """Maps results back by text, as one might from an API that returns documents."""

    def rerank(self, question, hits, limit):
        by_text = {hit.text: hit for hit in hits}
        return [by_text[hit.text] for hit in super().rerank(question, hits, limit)]


class DropsMetadata(WordOverlapReranker):
    def rerank(self, question, hits, limit):
        return [dataclasses.replace(hit, metadata={}) for hit in super().rerank(question, hits, limit)]


class IntegerScores(WordOverlapReranker):
    def rerank(self, question, hits, limit):
        return [dataclasses.replace(hit, score=round(hit.score * 100)) for hit in super().rerank(question, hits, limit)]


class Reversed(WordOverlapReranker):
    """Keeps the retrieval order, reversed, with made-up descending scores."""

    def rerank(self, question, hits, limit):
        return [dataclasses.replace(hit, score=1.0 - i / 10) for i, hit in enumerate(reversed(list(hits)))][:limit]


class SortsInPlace(WordOverlapReranker):
    def rerank(self, question, hits, limit):
        result = super().rerank(question, hits, limit)
        hits.sort(key=lambda hit: hit.text)
        return result


@pytest.mark.parametrize("broken, test, message", [
    (Ascending, "test_a_best_first_subset_of_at_most_limit", "not best first"),
    (IgnoresLimit, "test_a_best_first_subset_of_at_most_limit", "for limit 1"),
    (ByText, "test_same_text_twice_is_two_results", "returned twice|must be the top two"),
    (DropsMetadata, "test_a_best_first_subset_of_at_most_limit", "changed beyond its score"),
    (IntegerScores, "test_a_best_first_subset_of_at_most_limit", "not a finite float"),
    (Reversed, "test_the_answer_comes_first", "ranked above the answer"),
    (SortsInPlace, "test_input_is_not_modified_and_any_sequence_works", "modified the list"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_contract_catches(broken, test, message):
    with pytest.raises(AssertionError, match=message):
        getattr(CONTRACT, test)(broken())


def test_empty_input_must_give_nothing():
    class Padding(WordOverlapReranker):
        def rerank(self, question, hits, limit):
            return super().rerank(question, hits, limit) or hits_of(["filler"])

    with pytest.raises(AssertionError):
        CONTRACT.test_no_hits_or_no_room_gives_nothing(Padding())


def test_the_default_cases_need_the_answer_to_rank_first_for_a_lexical_reranker():
    """The cases are usable by lexical rerankers: the answer shares the most words."""
    reranker = WordOverlapReranker()
    for question, answer, others in RELEVANCE_CASES:
        ranked = reranker.rerank(question, hits_of(others + [answer]), 10)
        assert ranked[0].text == answer and ranked[0].score > ranked[1].score
