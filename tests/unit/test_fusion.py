import pytest

from spacio.rag.contracts import Hit
from spacio.rag.fusion import fuse, reciprocal_rank_fusion


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


# --------------------------------------------------------------------------- fuse: convex and document evidence

def scored(*pairs, document=None):
    """Hits from (id, score) pairs; each its own document unless ``document`` is given."""
    return [Hit(id=i, document_id=document or f"doc-{i}", ordinal=n, text=i, score=s)
            for n, (i, s) in enumerate(pairs)]


def test_convex_fusion_sums_min_max_normalised_scores():
    vector = scored(("a", 0.9), ("b", 0.7), ("c", 0.5))  # -> 1.0, 0.5, 0.0
    keyword = scored(("b", 30.0), ("d", 10.0))  # -> 1.0, 0.0
    fused = fuse([vector, keyword], method="convex", weights=[0.5, 0.5], limit=10)
    assert {h.id: h.score for h in fused} == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.0, "d": 0.0})
    assert [h.id for h in fused][:2] == ["b", "a"]


def test_convex_fusion_keeps_score_gaps_that_ranks_lose():
    # keyword: "a" far ahead of "b"; vector: "b" barely ahead of "a". RRF calls it a tie.
    vector = scored(("b", 0.80), ("a", 0.79), ("z", 0.30))
    keyword = scored(("a", 25.0), ("b", 5.0), ("y", 4.0))
    assert fuse([vector, keyword], method="convex", limit=1)[0].id == "a"
    rrf = fuse([vector, keyword], method="rrf", limit=2)
    assert rrf[0].score == pytest.approx(rrf[1].score)


def test_convex_fusion_of_a_list_with_equal_scores_counts_them_all_as_best():
    fused = fuse([scored(("a", 3.0), ("b", 3.0))], method="convex", limit=5)
    assert [h.score for h in fused] == [1.0, 1.0]


def test_document_evidence_joins_chunks_of_one_document_found_by_different_lists():
    # the vector search found chunk 1 of "paper", the keyword search chunk 2 of it; "other"
    # is found by both lists but lower in each
    vector = [Hit("paper-1", "paper", 0, "", 0.9), Hit("other-1", "other", 0, "", 0.8), Hit("x", "x", 0, "", 0.1)]
    keyword = [Hit("paper-2", "paper", 1, "", 9.0), Hit("other-1", "other", 0, "", 8.0), Hit("y", "y", 0, "", 1.0)]
    chunk_level = fuse([vector, keyword], method="convex", limit=3)
    assert chunk_level[0].id == "other-1"
    document_level = fuse([vector, keyword], method="convex", document_weight=1.0, limit=3)
    assert document_level[0].document_id == "paper"
    half = fuse([vector, keyword], method="convex", document_weight=0.5, limit=5)
    assert {h.id: h.score for h in half}["paper-1"] == pytest.approx(0.5 * 1.0 + 0.5 * (1.0 + 1.0))


def test_fuse_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fuse([hits("a")], method="borda", limit=1)
    with pytest.raises(ValueError):
        fuse([hits("a")], document_weight=1.5, limit=1)
    with pytest.raises(ValueError):
        fuse([hits("a")], k=-1, limit=1)
