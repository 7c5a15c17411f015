import pytest

from spacio.rag.contracts import Hit
from spacio.rag.fusion import reciprocal_rank_fusion


def hits(*ids, score=0.5, text=""):
    return [Hit(id=i, document_id="d", ordinal=n, text=text or i, score=score) for n, i in enumerate(ids)]


def test_single_list_keeps_its_order_with_rrf_scores():
    fused = reciprocal_rank_fusion([hits("a", "b", "c")], limit=10)
    assert [h.id for h in fused] == ["a", "b", "c"]
    assert [h.score for h in fused] == pytest.approx([1 / 61, 1 / 62, 1 / 63])


def test_hit_in_both_lists_beats_hits_in_one():
    fused = reciprocal_rank_fusion([hits("a", "shared"), hits("b", "shared")], limit=10)
    assert fused[0].id == "shared"
    assert fused[0].score == pytest.approx(2 / 62)
    assert {h.id for h in fused} == {"a", "b", "shared"}


def test_limit_cuts_the_fused_list():
    fused = reciprocal_rank_fusion([hits("a", "b", "c"), hits("d", "e")], limit=2)
    assert len(fused) == 2
    assert reciprocal_rank_fusion([hits("a")], limit=0) == []


def test_ties_are_broken_deterministically_by_best_rank_then_list_order():
    # "a" and "x" are both rank 1 in one list, "b" and "y" both rank 2: equal scores.
    first = reciprocal_rank_fusion([hits("a", "b"), hits("x", "y")], limit=4)
    second = reciprocal_rank_fusion([hits("a", "b"), hits("x", "y")], limit=4)
    assert [h.id for h in first] == [h.id for h in second] == ["a", "x", "b", "y"]
    swapped = reciprocal_rank_fusion([hits("x", "y"), hits("a", "b")], limit=4)
    assert [h.id for h in swapped] == ["x", "a", "y", "b"]


def test_weights_shift_the_balance():
    lists = [hits("v1", "v2"), hits("k1", "k2")]
    assert reciprocal_rank_fusion(lists, weights=[1.0, 3.0], limit=4)[0].id == "k1"
    assert reciprocal_rank_fusion(lists, weights=[3.0, 1.0], limit=4)[0].id == "v1"
    with pytest.raises(ValueError):
        reciprocal_rank_fusion(lists, weights=[1.0], limit=4)


def test_smaller_k_favours_the_top_ranks():
    # "deep" is rank 1 in one list; "steady" is rank 2 in both.
    lists = [hits("deep", "steady"), hits("other", "steady")]
    assert reciprocal_rank_fusion(lists, k=60, limit=3)[0].id == "steady"
    assert reciprocal_rank_fusion(lists, k=0, limit=3)[0].id in {"deep", "other"}


def test_returns_the_first_lists_copy_of_a_hit_and_keeps_other_fields():
    vector = [Hit(id="a", document_id="doc", ordinal=3, text="from vector", score=0.9, page=2,
                  metadata={"m": 1})]
    keyword = [Hit(id="a", document_id="doc", ordinal=3, text="from keyword", score=12.0)]
    (fused,) = reciprocal_rank_fusion([vector, keyword], limit=5)
    assert (fused.text, fused.page, dict(fused.metadata)) == ("from vector", 2, {"m": 1})
    assert fused.score == pytest.approx(2 / 61)


def test_duplicates_inside_one_list_count_once():
    fused = reciprocal_rank_fusion([hits("a", "a", "b")], limit=5)
    assert [h.id for h in fused] == ["a", "b"]
    assert fused[0].score == pytest.approx(1 / 61)


def test_empty_inputs():
    assert reciprocal_rank_fusion([], limit=5) == []
    assert reciprocal_rank_fusion([[], []], limit=5) == []
    assert [h.id for h in reciprocal_rank_fusion([[], hits("a")], limit=5)] == ["a"]
