"""CohereReranker through the real ``cohere`` SDK against the local stand-in (request,
scores, limits, batching, retries, error mapping), the reranker contract, and the same
contract against the real API when ``COHERE_API_KEY`` is set."""

import os

import pytest
from cohere_standin import API_KEY
from marshmallow import ValidationError

from spacio.rag.contracts import InvalidInput, PluginError, Reranker, UpstreamUnavailable
from spacio.testing.contracts.reranker import RerankerContract, hits_of
from spacio_cohere import CohereReranker

DOCUMENTS = ["The cat sat on the mat.", "Vector search ranks passages.", "Search the vector index fast.",
             "Passages about nothing in particular."]


class TestCohereRerankerContract(RerankerContract):
    @pytest.fixture
    def reranker_options(self, cohere_server):
        return {"api_key": API_KEY, "base_url": cohere_server.url, "backoff": 0.001, "timeout": 5}

    @pytest.fixture
    def reranker(self, reranker_options):
        return CohereReranker(**reranker_options)


def reranker_for(standin_options, **options):
    return CohereReranker(**{**standin_options, **options})


def record_sleeps(reranker, monkeypatch) -> list[float]:
    sleeps: list[float] = []
    monkeypatch.setattr(reranker._caller, "_sleep", sleeps.append)
    return sleeps


# --------------------------------------------------------------------------- requests and results

def test_request_and_reordered_hits_with_cohere_scores(standin, standin_options):
    hits = hits_of(DOCUMENTS)
    ranked = reranker_for(standin_options).rerank("vector search", hits, 2)

    (call,) = standin.calls("/v2/rerank")
    assert call.body == {"model": "rerank-v3.5", "query": "vector search", "documents": DOCUMENTS, "top_n": 2}
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert [hit.id for hit in ranked] == [hits[1].id, hits[2].id]
    results = call.response["results"]
    assert [hit.score for hit in ranked] == [r["relevance_score"] for r in results] == [1.0, 1.0]
    assert ranked[0] == hits[1].__class__(**{**vars(hits[1]), "score": 1.0})  # every other field kept


def test_limit_above_the_number_of_hits(standin, standin_options):
    hits = hits_of(DOCUMENTS)
    ranked = reranker_for(standin_options).rerank("vector search", hits, 50)
    assert standin.calls("/v2/rerank")[0].body["top_n"] == 4
    assert [hit.text for hit in ranked] == [DOCUMENTS[1], DOCUMENTS[2], DOCUMENTS[0], DOCUMENTS[3]]
    assert ranked[-1].score == 0.0


def test_max_tokens_per_doc_and_model_options(standin, standin_options):
    reranker_for(standin_options, model="rerank-multilingual-v3.0", max_tokens_per_doc=256) \
        .rerank("q", hits_of(["d"]), 1)
    body = standin.calls("/v2/rerank")[0].body
    assert body["model"] == "rerank-multilingual-v3.0" and body["max_tokens_per_doc"] == 256


def test_nothing_to_rank_makes_no_request(standin, standin_options):
    reranker = reranker_for(standin_options)
    assert reranker.rerank("question", [], 10) == []
    assert reranker.rerank("question", hits_of(DOCUMENTS), 0) == []
    assert reranker.rerank("question", hits_of(DOCUMENTS), -3) == []
    assert standin.requests == []


def test_empty_question_is_invalid_without_a_request(standin, standin_options):
    with pytest.raises(InvalidInput) as error:
        reranker_for(standin_options).rerank("  ", hits_of(DOCUMENTS), 3)
    assert error.value.reason == "empty_question" and standin.requests == []


def test_more_hits_than_one_request_takes_are_batched_and_merged(standin, standin_options):
    texts = [f"filler text number {i}" for i in range(1200)]
    texts[1100] = "the needle about vector search"
    texts[7] = "vector search again"
    hits = hits_of(texts)
    ranked = reranker_for(standin_options).rerank("needle vector search", hits, 3)

    calls = standin.calls("/v2/rerank")
    assert [len(c.body["documents"]) for c in calls] == [1000, 200]
    assert [c.body["top_n"] for c in calls] == [3, 3]
    assert [hit.id for hit in ranked][:2] == [hits[1100].id, hits[7].id]
    assert ranked[0].score == 1.0 and 0.66 < ranked[1].score < 0.67


# --------------------------------------------------------------------------- retries and errors

def test_429_is_retried_after_retry_after(standin, standin_options, monkeypatch):
    reranker = reranker_for(standin_options)
    sleeps = record_sleeps(reranker, monkeypatch)
    standin.fail(429, retry_after=1, path="/v2/rerank")
    assert reranker.rerank("vector search", hits_of(DOCUMENTS), 1)[0].text == DOCUMENTS[1]
    assert sleeps == [1.0]
    assert [c.status for c in standin.calls("/v2/rerank")] == [429, 200]


def test_persistent_500_is_unavailable(standin, standin_options):
    reranker = reranker_for(standin_options, max_retries=1)
    standin.fail(500, times=3, path="/v2/rerank")
    with pytest.raises(UpstreamUnavailable) as error:
        reranker.rerank("vector search", hits_of(DOCUMENTS), 2)
    assert error.value.retryable and "500" in error.value.message
    assert len(standin.calls("/v2/rerank")) == 2


def test_a_long_retry_after_goes_to_the_host(standin, standin_options, monkeypatch):
    reranker = reranker_for(standin_options)
    sleeps = record_sleeps(reranker, monkeypatch)
    standin.fail(429, retry_after=60, path="/v2/rerank")
    with pytest.raises(UpstreamUnavailable) as error:
        reranker.rerank("vector search", hits_of(DOCUMENTS), 2)
    assert error.value.retry_after == 60 and sleeps == []


def test_timeout_is_unavailable(standin, standin_options):
    standin.stall(1.0)
    with pytest.raises(UpstreamUnavailable) as error:
        reranker_for(standin_options, timeout=0.2, max_retries=0).rerank("q", hits_of(DOCUMENTS), 2)
    assert error.value.reason == "upstream_timeout"


def test_wrong_key_is_an_auth_error(standin, standin_options):
    with pytest.raises(PluginError) as error:
        reranker_for(standin_options, api_key="wrong").rerank("q", hits_of(DOCUMENTS), 2)
    assert error.value.reason == "upstream_auth" and not error.value.retryable
    assert len(standin.calls("/v2/rerank")) == 1


def test_unknown_model_is_a_config_error(standin, standin_options):
    with pytest.raises(PluginError) as error:
        reranker_for(standin_options, model="embed-english-v3.0").rerank("q", hits_of(DOCUMENTS), 2)
    assert error.value.reason == "upstream_not_found"


@pytest.mark.parametrize("body", [
    '{"id": "x"}',
    '{"id": "x", "results": [{"index": 9, "relevance_score": 0.5}]}',
    '{"id": "x", "results": [{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.4}]}',
    '{"id": "x", "results": [{"index": 1, "relevance_score": "high"}]}',
    '{"id": "x", "results": [{"index": 1}]}',
])
def test_unreadable_success_is_unavailable(standin, standin_options, body):
    standin.fail(200, raw_body=body, path="/v2/rerank")
    with pytest.raises(UpstreamUnavailable) as error:
        reranker_for(standin_options, max_retries=0).rerank("q", hits_of(DOCUMENTS), 2)
    assert error.value.reason == "upstream_bad_response"


# --------------------------------------------------------------------------- construction

def test_constructor_does_no_io_and_defaults(standin, standin_options):
    reranker = reranker_for(standin_options)
    assert isinstance(reranker, Reranker)
    assert reranker._caller._client is None and standin.requests == []
    defaults = CohereReranker(api_key="k")
    assert (defaults.model, defaults.max_tokens_per_doc, defaults._caller.max_retries) == ("rerank-v3.5", None, 2)
    assert "secret" not in repr(CohereReranker(api_key="secret-key"))


@pytest.mark.parametrize("options, field", [
    ({"model": ""}, "model"), ({"max_tokens_per_doc": 0}, "max_tokens_per_doc"), ({"top_n": 3}, "top_n"),
])
def test_invalid_options(options, field):
    with pytest.raises(ValidationError) as error:
        CohereReranker(**{"api_key": "k", **options})
    assert field in error.value.messages


# --------------------------------------------------------------------------- the real API

@pytest.mark.external
@pytest.mark.skipif(not os.environ.get("COHERE_API_KEY"), reason="COHERE_API_KEY is not set")
class TestCohereRerankerExternal(RerankerContract):
    """The contract against api.cohere.com with the default model (semantic)."""

    @pytest.fixture
    def reranker_options(self):
        return {"base_url": os.environ["COHERE_BASE_URL"]} if os.environ.get("COHERE_BASE_URL") else {}

    @pytest.fixture
    def reranker(self, reranker_options):
        return CohereReranker(**reranker_options)

    def test_three_documents_by_meaning(self, reranker):
        hits = hits_of(["Paris is the capital of France.",
                        "Photosynthesis turns light into chemical energy.",
                        "The French government sits in its largest city."])
        ranked = reranker.rerank("Where is France governed from?", hits, 3)
        assert {hit.id for hit in ranked[:2]} == {hits[0].id, hits[2].id}
        assert ranked[-1].id == hits[1].id and all(0.0 <= hit.score <= 1.0 for hit in ranked)
