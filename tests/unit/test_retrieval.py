"""Retrieval's decisions without a server: which hits a mode keeps, how the reranker is fed,
and when a search counts as grounded (spacio/rag/retrieval.py)."""

import pytest

from spacio.config import Defaults
from spacio.rag import retrieval
from spacio.rag.contracts import Hit
from spacio.rag.retrieval import Settings, coverage, grounded, rank


def hit(id, document="d", score=0.5, text=""):
    return Hit(id=id, document_id=document, ordinal=0, text=text or id, score=score)


VECTOR = [hit("v1", "A", 0.82), hit("shared", "B", 0.80), hit("v3", "C", 0.41)]
KEYWORD = [hit("k1", "D", 14.0), hit("shared", "B", 13.5), hit("k3", "E", 2.0)]
TUNED = Settings(candidates=10, fusion="convex", vector_weight=0.5, document_weight=0.0, min_similarity=0.4)


def ids(hits):
    return [h.id for h in hits]


def test_vector_and_keyword_modes_keep_their_own_ranking():
    assert ids(rank(VECTOR, KEYWORD, mode="vector", top_k=10, tuned=TUNED)) == ["v1", "shared", "v3"]
    assert ids(rank(VECTOR, KEYWORD, mode="keyword", top_k=10, tuned=TUNED)) == ["k1", "shared", "k3"]
    assert ids(rank(VECTOR, KEYWORD, mode="vector", top_k=2, tuned=TUNED)) == ["v1", "shared"]


def test_hybrid_puts_what_both_lists_found_first_and_cuts_to_top_k():
    fused = rank(VECTOR, KEYWORD, mode="hybrid", top_k=4, tuned=TUNED)
    assert ids(fused)[0] == "shared"
    assert len(fused) == 4 and set(ids(fused)) <= {"v1", "v3", "k1", "k3", "shared"}
    scores = [h.score for h in fused]
    assert scores == sorted(scores, reverse=True)


def test_hybrid_honours_the_configured_method_and_weights():
    keyword_heavy = Settings(candidates=10, fusion="rrf", vector_weight=0.1, document_weight=0.0)
    vector_heavy = Settings(candidates=10, fusion="rrf", vector_weight=0.9, document_weight=0.0)
    lists = ([hit("v"), hit("x")], [hit("k"), hit("y")])
    assert ids(rank(*lists, mode="hybrid", top_k=1, tuned=keyword_heavy)) == ["k"]
    assert ids(rank(*lists, mode="hybrid", top_k=1, tuned=vector_heavy)) == ["v"]


def test_an_empty_side_leaves_the_other_sides_order():
    assert ids(rank([], KEYWORD, mode="hybrid", top_k=10, tuned=TUNED)) == ["k1", "shared", "k3"]
    assert ids(rank(VECTOR, [], mode="hybrid", top_k=10, tuned=TUNED)) == ["v1", "shared", "v3"]
    assert rank([], [], mode="hybrid", top_k=10, tuned=TUNED) == []


def test_the_reranker_sees_the_fused_candidates_and_decides_the_order():
    seen = {}

    def rerank(hits, limit):
        seen["ids"], seen["limit"] = ids(hits), limit
        return sorted(hits, key=lambda h: h.id)[:limit]

    tuned = Settings(candidates=10, fusion="convex", rerank_candidates=4)
    result = rank(VECTOR, KEYWORD, mode="hybrid", top_k=2, tuned=tuned, rerank=rerank)
    assert seen["limit"] == 2 and len(seen["ids"]) == 4  # rerank_candidates of the fused list
    assert ids(result) == sorted(seen["ids"])[:2]
    # top_k above rerank_candidates: the reranker still gets top_k candidates
    rank(VECTOR, KEYWORD, mode="hybrid", top_k=5, tuned=tuned, rerank=rerank)
    assert len(seen["ids"]) == 5


def test_the_reranker_is_not_called_without_hits():
    def rerank(hits, limit):
        raise AssertionError("called")

    assert rank([], [], mode="hybrid", top_k=3, tuned=TUNED, rerank=rerank) == []


def test_grounded_is_the_best_cosine_against_the_threshold():
    assert grounded("hybrid", "q", 0.41, [], TUNED) is True
    assert grounded("vector", "q", 0.40, [], TUNED) is True
    assert grounded("hybrid", "q", 0.39, KEYWORD, TUNED) is False  # keyword matches do not make it relevant
    assert grounded("hybrid", "q", None, [], TUNED) is False  # an empty space


def test_keyword_mode_is_grounded_by_the_questions_words_in_a_hit():
    question = "Do mitochondria regulate apoptosis in neurons?"
    on_topic = [hit("a", text="Mitochondrial signals regulate apoptosis of cortical neurons.")]
    off_topic = [hit("b", text="Neurons fire action potentials.")]
    assert grounded("keyword", question, None, on_topic, TUNED) is True
    assert grounded("keyword", question, None, off_topic, TUNED) is False
    assert grounded("keyword", question, None, [], TUNED) is False


def test_coverage_counts_content_words_loosely():
    assert coverage("What is the role of mitochondria?", "Mitochondrial roles in the cell") == 1.0
    assert coverage("How long should I boil an egg?", "egg cells divide") == pytest.approx(1 / 3)
    assert coverage("what is it?", "anything") == 0.0  # no content words at all


def test_settings_come_from_the_config_and_the_defaults_are_sane():
    tuned = retrieval.settings({key: getattr(Defaults, key) for key in dir(Defaults) if key.isupper()})
    assert tuned.fusion in ("rrf", "convex")
    assert 0.0 <= tuned.vector_weight <= 1.0 and 0.0 <= tuned.document_weight <= 1.0
    assert tuned.candidates >= 10 and tuned.rerank_candidates >= 10
    assert tuned.min_similarity is None  # each embedder's own calibrated threshold


def test_the_grounded_threshold_is_the_embedders_unless_configured():
    class Calibrated:
        grounded_min_similarity = 0.25

    assert retrieval.min_similarity(Calibrated(), Settings()) == 0.25
    assert retrieval.min_similarity(object(), Settings()) == retrieval.UNCALIBRATED_MIN_SIMILARITY
    assert retrieval.min_similarity(Calibrated(), Settings(min_similarity=0.5)) == 0.5
    assert retrieval.settings({**{k: getattr(Defaults, k) for k in dir(Defaults) if k.isupper()},
                               "GROUNDED_MIN_SIMILARITY": "0.45"}).min_similarity == 0.45


def test_plugins_run_on_a_real_thread_unless_they_say_they_are_not_cpu_bound():
    from spacio.concurrency import _direct, in_real_thread, plugin_runner

    class Local:
        pass

    class Remote:
        cpu_bound = False

    assert plugin_runner(Local()) is in_real_thread  # the default: CPU-bound (MiniLM, the local store)
    assert plugin_runner(Remote()) is _direct  # pgvector: its psycopg pool lives on the hub
    assert plugin_runner(Local(), cpu_bound=False) is _direct  # generators: remote unless they say otherwise


def test_page_reports_become_a_documents_diagnostics():
    from spacio.rag.contracts import PageReport, ParsedDocument, Section
    from spacio.rag.pipeline import diagnostics_of

    parsed = ParsedDocument((Section("x", page=1),), pages=3, page_reports=(
        PageReport(1, "text"), PageReport(2, "ocr"), PageReport(3, "skipped", "too_many_pixels")))
    assert diagnostics_of(parsed) == {"pages_with_text": 1, "pages_ocr": 1, "pages_skipped": 1,
                                      "skipped": [{"page": 3, "reason": "too_many_pixels"}]}
    assert diagnostics_of(ParsedDocument((Section("x"),))) is None
