"""PineconeVectorStore with the real ``pinecone`` SDK against the stand-in (pinecone_standin.py),
and against the real service when PINECONE_API_KEY is set (``external``)."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from pinecone_standin import API_KEY, PineconeStandin
from spacio.rag.contracts import InvalidInput, PluginError, UpstreamUnavailable, VectorRecord, VectorStore
from spacio.rag.registry import build
from spacio.testing.contracts.vector_store import (
    RARE_WORD,
    VectorStoreContract,
    basis,
    cosine,
    new_document_id,
    random_records,
    record,
    unit,
)
from spacio_pinecone import PineconeVectorStore
from spacio_pinecone.store import MAX_METADATA_BYTES, pinecone_namespace, record_id

def store_on(standin: PineconeStandin, **options) -> PineconeVectorStore:
    return PineconeVectorStore(**{"api_key": API_KEY, "controller_host": standin.url, "backoff": 0.001,
                                  "timeout": 5, **options})


# --------------------------------------------------------------------------- the contract


class TestPineconeContract(VectorStoreContract):
    """Every contract test through pinecone 10 (REST) against the stand-in. The store says
    ``keyword_search = False``: the contract skips its keyword-only tests, with that reason,
    and runs the vector part of the others."""

    crowd_size = 2000

    @pytest.fixture(scope="class")
    def vector_store(self, pinecone_server):
        store = store_on(pinecone_server, index="contract")
        yield store
        store.close()


# --------------------------------------------------------------------------- no keyword search


def test_the_store_declares_what_the_host_must_know(options):
    store = PineconeVectorStore(**options)
    assert PineconeVectorStore.keyword_search is False and PineconeVectorStore.cpu_bound is False
    assert isinstance(store, VectorStore)


def test_text_alone_finds_nothing_and_text_with_a_vector_is_a_vector_search(options, caplog):
    store = PineconeVectorStore(**options, index="keywords")
    store.ensure_namespace("words", 4)
    document = new_document_id()
    store.upsert("words", [record(document, i, basis(4, i), text=f"{RARE_WORD} {i}") for i in range(4)])
    with caplog.at_level(logging.WARNING, logger="spacio_pinecone"):
        assert store.search("words", text=RARE_WORD, limit=5) == []
        assert store.search("words", text="anything", limit=5) == []
    assert len([r for r in caplog.records if "no keyword search" in r.getMessage()]) == 1  # said once
    by_vector = store.search("words", vector=basis(4, 2), limit=4)
    assert store.search("words", vector=basis(4, 2), text=RARE_WORD, limit=4) == by_vector
    assert by_vector[0].ordinal == 2
    with pytest.raises(InvalidInput):
        store.search("words", limit=3)
    store.drop_namespace("words")


# --------------------------------------------------------------------------- the index


def test_constructor_does_no_io(fresh_standin):
    store = store_on(fresh_standin)
    PineconeVectorStore(api_key="k", controller_host="http://127.0.0.1:9", host="http://127.0.0.1:9/x")
    assert fresh_standin.requests == []
    assert store.count("nothing-yet") == 0  # the index does not exist: nothing is stored, nothing created
    assert [(r.method, r.path) for r in fresh_standin.requests] == [("GET", "/indexes/spacio")]
    assert fresh_standin.indexes == {}


def test_the_index_is_created_on_first_use_as_a_serverless_cosine_index(fresh_standin):
    store = store_on(fresh_standin, index="made-here", cloud="gcp", region="europe-west4")
    store.ensure_namespace("first", 8)
    store.ensure_namespace("second", 8)  # found once, then known
    created = fresh_standin.calls("/indexes", "POST")
    assert len(created) == 1
    assert created[0].body == {
        "name": "made-here",
        "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": 8, "metric": "cosine"}}},
        "deployment": {"deployment_type": "managed", "cloud": "gcp", "region": "europe-west4"},
    }
    assert len(fresh_standin.calls("/indexes/made-here", "GET")) == 2  # before create, and the SDK's readiness poll
    for call in fresh_standin.requests:
        assert call.headers["api-key"] == API_KEY
        assert call.headers["x-pinecone-api-version"] == "2026-07"
        assert "spacio" in call.headers["user-agent"]
    store.upsert("first", random_records(new_document_id(), 3, 8))
    assert fresh_standin.requests[-1].index == "made-here"  # the data plane: the host the description gave
    store.close()


def test_an_existing_index_is_used_and_its_dimension_checked(standin, options):
    standin.create_index("dims-4", 4)
    store = PineconeVectorStore(**options, index="dims-4")
    store.ensure_namespace("ok", 4)
    assert standin.calls("/indexes", "POST") == []
    for call in (lambda: store.ensure_namespace("other", 6),
                 lambda: store.upsert("ok", random_records(new_document_id(), 2, 6)),
                 lambda: store.search("ok", vector=basis(6, 0), limit=1)):
        with pytest.raises(PluginError) as raised:
            call()
        assert raised.value.reason == "pipeline_changed" and not raised.value.retryable
        assert "4-dimension" in raised.value.message
    fresh = PineconeVectorStore(**options, index="dims-4")  # a new process: same answer on first use
    with pytest.raises(PluginError) as raised:
        fresh.ensure_namespace("ok", 768)
    assert raised.value.reason == "pipeline_changed"


def test_the_services_dimension_error_is_pipeline_changed(standin, options):
    """Given only the data-plane host, a vector of the wrong size is refused by Pinecone."""
    standin.create_index("by-host", 4)
    store = PineconeVectorStore(**options, host=standin.host_of("by-host"))
    store._dimension = None  # as if describe_index_stats had not said (an index that does not report it)
    store._data = store._open(standin.host_of("by-host"))
    with pytest.raises(PluginError) as raised:
        store.upsert("x", random_records(new_document_id(), 1, 6))
    assert raised.value.reason == "pipeline_changed" and "holds 4-dimension vectors, not 6" in raised.value.message
    with pytest.raises(PluginError) as raised:
        store.search("x", vector=basis(6, 0), limit=1)
    assert raised.value.reason == "pipeline_changed"


def test_a_given_host_never_calls_the_control_plane(standin, options):
    standin.create_index("hosted", 8)
    store = PineconeVectorStore(**options, host=standin.host_of("hosted"))
    store.ensure_namespace("h", 8)
    records = random_records(new_document_id(), 5, 8)
    store.upsert("h", records)
    assert store.search("h", vector=records[1].vector, limit=1)[0].id == records[1].id
    assert store.count("h") == 5
    store.drop_namespace("h")
    assert all(r.index == "hosted" for r in standin.requests)  # every call on the data plane
    with pytest.raises(PluginError) as raised:
        store.ensure_namespace("h", 16)  # the dimension came from describe_index_stats
    assert raised.value.reason == "pipeline_changed"


def test_an_index_of_another_metric_or_kind_is_refused(standin, options):
    standin.create_index("euclid", 4, metric="euclidean")
    with pytest.raises(PluginError) as raised:
        PineconeVectorStore(**options, index="euclid").ensure_namespace("x", 4)
    assert raised.value.reason == "index_incompatible" and "euclidean" in raised.value.message
    standin.create_index("dot", 4, metric="dotproduct")  # same scores on unit vectors
    dot = PineconeVectorStore(**options, index="dot")
    dot.ensure_namespace("x", 4)
    dot.upsert("x", [record(new_document_id(), 0, basis(4, 0))])
    assert dot.search("x", vector=unit([1.0, 1.0, 0.0, 0.0]), limit=1)[0].score == pytest.approx(math.sqrt(0.5))


def test_an_index_that_is_not_ready_yet_is_upstream_unavailable(fresh_standin):
    fresh_standin.create_index("warming", 4)
    fresh_standin.not_ready_for = 2
    store = store_on(fresh_standin, index="warming")
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable) as raised:
            store.ensure_namespace("w", 4)
        assert "not ready" in raised.value.message and raised.value.retry_after == 10.0
    store.ensure_namespace("w", 4)  # the host retried later
    assert store.count("w") == 0


def test_an_index_created_meanwhile_by_another_process_is_used(standin, options):
    standin.create_index("raced", 4)
    standin.fail(404, path="/indexes/raced", message="Resource raced not found")  # it did not exist when we looked
    store = PineconeVectorStore(**options, index="raced")
    store.ensure_namespace("r", 4)  # the create answers 409: described again and used
    assert [r.status for r in standin.calls("/indexes", "POST")] == [409]
    store.upsert("r", random_records(new_document_id(), 2, 4))
    assert store.count("r") == 2


def test_an_index_deleted_behind_the_stores_back_is_created_again(fresh_standin):
    store = store_on(fresh_standin, index="fragile")
    store.ensure_namespace("f", 4)
    store.upsert("f", random_records(new_document_id(), 2, 4))
    del fresh_standin.indexes["fragile"]  # someone deleted it in the console
    document = new_document_id()
    store.delete_document("f", document)  # nothing there: quiet
    with pytest.raises(UpstreamUnavailable) as raised:  # the host retries the ingestion
        store.upsert("f", random_records(document, 3, 4))
    assert "gone" in raised.value.message
    store.ensure_namespace("f", 4)  # the retry
    store.upsert("f", random_records(document, 3, 4))
    assert len(fresh_standin.calls("/indexes", "POST")) == 2 and store.count("f") == 3


# --------------------------------------------------------------------------- records


def test_records_carry_their_document_in_id_and_metadata(standin, options):
    store = PineconeVectorStore(**options, index="layout")
    store.ensure_namespace("layout", 4)
    document = new_document_id()
    with_page = record(document, 3, basis(4, 0), text="page three", page=3, metadata={"heading": None, "n": 1})
    plain = record(document, 4, basis(4, 1), text="no page")
    store.upsert("layout", [with_page, plain])
    stored = standin.records("layout", "layout")
    assert set(stored) == {f"{document}#{with_page.id}", f"{document}#{plain.id}"}
    values, metadata = stored[f"{document}#{with_page.id}"]
    assert values == pytest.approx(with_page.vector)
    assert metadata == {"document_id": document, "ordinal": 3, "page": 3, "text": "page three",
                        "metadata": '{"heading":null,"n":1}'}
    assert stored[f"{document}#{plain.id}"][1] == {"document_id": document, "ordinal": 4, "text": "no page"}
    assert record_id("a#b/c ü", "d#e") == "a%23b%2Fc%20%C3%BC#d%23e"  # neither part holds a '#' afterwards


def test_odd_namespace_and_document_names_round_trip(standin, options):
    store = PineconeVectorStore(**options, index="odd-names")
    odd, other = "space/ü 1", "space/ü 2"
    assert pinecone_namespace(odd) == pinecone_namespace(odd) != pinecone_namespace(other)
    assert pinecone_namespace(odd).isascii() and pinecone_namespace("") != ""
    assert pinecone_namespace(str(uuid.UUID(int=7))) == str(uuid.UUID(int=7))
    for name in (odd, other):
        store.ensure_namespace(name, 4)
    document, prefix_twin = "doc#1 ü", "doc#1 ü#2"  # one's id prefix is the start of the other's
    store.upsert(odd, [record(document, 0, basis(4, 0)), record(prefix_twin, 0, basis(4, 1))])
    hit = store.search(odd, vector=basis(4, 0), limit=1)[0]
    assert (hit.document_id, hit.id) == (document, record(document, 0, basis(4, 0)).id)
    assert store.search(other, vector=basis(4, 0), limit=3) == []
    assert store.count(odd, document_id=document) == 1
    store.delete_document(odd, document)
    assert [h.document_id for h in store.search(odd, vector=basis(4, 0), limit=3)] == [prefix_twin]
    store.drop_namespace(odd)
    assert store.count(odd) == 0


def test_a_text_over_pineconess_metadata_limit_is_cut_to_fit(standin, options, caplog):
    store = PineconeVectorStore(**options, index="big-text")
    store.ensure_namespace("big", 4)
    document = new_document_id()
    long_text = "Zürich \"quoted\" 東京 \n" * 4000  # ~100 KB of UTF-8, with characters JSON escapes
    with caplog.at_level(logging.WARNING, logger="spacio_pinecone"):
        store.upsert("big", [record(document, 0, basis(4, 0), text=long_text, metadata={"heading": "H"})])
    assert any("cut from" in r.getMessage() for r in caplog.records)
    hit = store.search("big", vector=basis(4, 0), limit=1)[0]
    assert long_text.startswith(hit.text) and len(hit.text) > 10_000
    assert dict(hit.metadata) == {"heading": "H"}
    _, stored = standin.records("big-text", "big")[f"{document}#{hit.id}"]
    assert stored["text_truncated"] is True
    size = len(json.dumps(stored, ensure_ascii=False, separators=(",", ":")).encode())
    assert MAX_METADATA_BYTES - 1024 < size <= MAX_METADATA_BYTES  # filled, within the limit
    with pytest.raises(InvalidInput) as raised:  # the record's own metadata alone is too large
        store.upsert("big", [record(document, 1, basis(4, 1), metadata={"blob": "x" * 50_000})])
    assert raised.value.reason == "metadata_too_large"


def test_upserts_are_split_by_count_and_by_size(standin, options):
    store = PineconeVectorStore(**options, index="batches")
    store.ensure_namespace("many", 8)
    document = new_document_id()
    store.upsert("many", random_records(document, 250, 8))
    assert [len(r.body["vectors"]) for r in standin.calls("/vectors/upsert")] == [100, 100, 50]  # batch_size
    wide = PineconeVectorStore(**options, index="batches-1536")
    wide.ensure_namespace("many", 1536)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((250, 1536)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    long_text = "lorem ipsum dolor sit amet " * 1000  # ~27 KB: with the vector's JSON ~57 KB per record
    standin.reset()
    wide.upsert("many", [record(document, i, vectors[i], text=long_text) for i in range(250)])
    calls = standin.calls("/vectors/upsert")
    assert all(r.status == 200 for r in calls)  # each within 2 MB (the stand-in refuses more)
    assert 8 <= len(calls) <= 12  # ~35 records fit in 2 MB; the estimate sends ~30
    assert sum(len(r.body["vectors"]) for r in calls) == 250
    assert wide.count("many", document_id=document) == 250
    assert wide.search("many", vector=vectors[123], limit=1)[0].ordinal == 123
    wide.drop_namespace("many")
    store.drop_namespace("many")


def test_search_sends_a_capped_top_k_and_an_exact_document_filter(standin, options):
    store = PineconeVectorStore(**options, index="queries")
    store.ensure_namespace("q", 4)
    first, second = new_document_id(), new_document_id()
    store.upsert("q", random_records(first, 3, 4) + random_records(second, 3, 4))
    store.search("q", vector=basis(4, 0), limit=5000)
    store.search("q", vector=basis(4, 0), limit=3, document_ids=[first])
    store.search("q", vector=basis(4, 0), limit=3, document_ids=[first, second, first])
    assert store.search("q", vector=basis(4, 0), limit=0) == []
    assert store.search("q", vector=basis(4, 0), limit=3, document_ids=[]) == []
    bodies = [r.body for r in standin.calls("/query")]
    assert [b["topK"] for b in bodies] == [1000, 3, 3]  # Pinecone returns at most 1000 with metadata
    assert [b.get("filter") for b in bodies] == [
        None, {"document_id": {"$eq": first}}, {"document_id": {"$in": [first, second]}}]
    assert all(b["includeMetadata"] is True and b["includeValues"] is False and b["namespace"] == "q"
               for b in bodies)


def test_numpy_rows_and_bad_inputs(standin, options):
    store = PineconeVectorStore(**options, index="inputs")
    store.ensure_namespace("in", 8)
    rows = np.eye(8, dtype=np.float32)
    document = new_document_id()
    store.upsert("in", [record(document, i, rows[i]) for i in range(8)])
    assert store.search("in", vector=rows[5], limit=1)[0].score == pytest.approx(1.0, abs=1e-6)
    good = dict(id=str(uuid.uuid4()), document_id="d", ordinal=0, text="t", vector=[1.0] + [0.0] * 7)
    for bad, reason in ((dict(good, metadata={"x": object()}), "invalid_metadata"),
                        (dict(good, vector=[math.nan] + [0.0] * 7), "invalid_vector"),
                        (dict(good, vector=[]), "invalid_vector"),
                        (dict(good, document_id="d" * 600), "invalid_record")):
        with pytest.raises(InvalidInput) as raised:
            store.upsert("in", [VectorRecord(**bad)])
        assert raised.value.reason == reason
    with pytest.raises(InvalidInput):
        store.search("in", vector=["x"] * 8, limit=1)
    assert len(standin.calls("/vectors/upsert")) == 1  # nothing bad was sent


# --------------------------------------------------------------------------- deletes and counts


def test_delete_by_id_prefix_pages_through_a_large_document(standin, options):
    store = PineconeVectorStore(**options, index="deletes")
    store.ensure_namespace("big", 4)
    big, small = new_document_id(), new_document_id()
    store.upsert("big", random_records(big, 2500, 4) + random_records(small, 3, 4))
    assert store.count("big", document_id=big) == 2500
    standin.reset()
    store.delete_document("big", big)
    deletes = standin.calls("/vectors/delete")
    assert "filter" in deletes[0].body and deletes[0].status == 400  # serverless: no delete by metadata
    assert [len(r.body["ids"]) for r in deletes[1:]] == [1000, 1000, 500]
    lists = standin.calls("/vectors/list")
    assert len(lists) == 25 and all(r.query["prefix"] == [f"{big}#"] for r in lists)
    assert store.count("big") == 3 and store.count("big", document_id=small) == 3
    standin.reset()
    store.delete_document("big", small)  # remembered: no second try by filter
    assert [("filter" in r.body, len(r.body.get("ids", []))) for r in standin.calls("/vectors/delete")] == \
        [(False, 3)]
    store.drop_namespace("big")


def test_an_index_that_deletes_by_filter_does_it_in_one_call(standin, options):
    standin.filter_delete = True
    store = PineconeVectorStore(**options, index="filtered")
    store.ensure_namespace("f", 4)
    gone, kept = new_document_id(), new_document_id()
    store.upsert("f", random_records(gone, 150, 4) + random_records(kept, 2, 4))
    standin.requests.clear()
    store.delete_document("f", gone)
    assert [(r.path, r.body) for r in standin.requests] == [
        ("/vectors/delete", {"namespace": "f", "filter": {"document_id": {"$eq": gone}}})]
    assert store.count("f") == 2
    store.drop_namespace("f")


def test_deletes_and_counts_of_what_does_not_exist_are_quiet(standin, options):
    store = PineconeVectorStore(**options, index="quiet")
    store.ensure_namespace("exists", 4)
    for name in ("exists", "never-written"):
        store.delete_document(name, new_document_id())
        store.drop_namespace(name)
        assert store.count(name) == 0 and store.count(name, document_id=new_document_id()) == 0
        assert store.search(name, vector=basis(4, 0), limit=3) == []
    assert {r.status for r in standin.requests if r.index == "quiet"} <= {200, 400, 404}


# --------------------------------------------------------------------------- failures


FAILING_CALLS = {
    "ensure_namespace": lambda s: s.ensure_namespace("failing", 4),
    "upsert": lambda s: s.upsert("failing", random_records(new_document_id(), 2, 4)),
    "search": lambda s: s.search("failing", vector=basis(4, 0), limit=3),
    "delete_document": lambda s: s.delete_document("failing", new_document_id()),
    "drop_namespace": lambda s: s.drop_namespace("failing"),
    "count": lambda s: s.count("failing"),
    "count by document": lambda s: s.count("failing", document_id=new_document_id()),
}


def _ready_store(standin, **options):
    store = store_on(standin, index="failing", **options)
    store.ensure_namespace("failing", 4)
    store.drop_namespace("failing")  # what earlier tests left
    store.upsert("failing", random_records(new_document_id(), 2, 4))
    standin.requests.clear()
    return store


@pytest.mark.parametrize("status", [429, 500, 502, 503])
@pytest.mark.parametrize("name", sorted(FAILING_CALLS))
def test_overload_and_server_errors_are_retried_then_upstream_unavailable(standin, name, status):
    store = _ready_store(standin, max_retries=2)
    if name == "ensure_namespace":
        store._data = None  # so that it describes the index again
    standin.fail(status, times=3)
    with pytest.raises(UpstreamUnavailable) as raised:
        FAILING_CALLS[name](store)
    assert f"HTTP {status}" in raised.value.message and raised.value.retryable
    assert [r.status for r in standin.requests] == [status] * 3  # 1 + max_retries, and not the SDK's own 3 more
    standin.fail(status, times=2)
    standin.requests.clear()
    FAILING_CALLS[name](store)  # two failures, then an answer: the caller sees only the answer
    statuses = [r.status for r in standin.requests]
    assert statuses[:2] == [status, status] and statuses[2] != status


def test_retry_after_is_waited_for_and_passed_on(standin):
    store = _ready_store(standin, max_retries=3)
    waits = []
    store._sleep = waits.append
    standin.fail(429, times=2, retry_after=2)
    assert store.search("failing", vector=basis(4, 0), limit=1)
    assert waits == [2.0, 2.0]
    standin.fail(429, times=4, retry_after=3)
    with pytest.raises(UpstreamUnavailable) as raised:
        store.count("failing")
    assert raised.value.retry_after == 3.0
    waits.clear()
    standin.requests.clear()
    standin.fail(429, retry_after=120)  # too long to hold a request: to the host at once, with the hint
    with pytest.raises(UpstreamUnavailable) as raised:
        store.search("failing", vector=basis(4, 0), limit=1)
    assert raised.value.retry_after == 120.0 and waits == [] and len(standin.requests) == 1
    standin.reset()


def test_backoff_doubles_between_retries(standin):
    store = _ready_store(standin, max_retries=4, backoff=0.5)
    waits = []
    store._sleep = waits.append
    standin.fail(503, times=5)
    with pytest.raises(UpstreamUnavailable):
        store.count("failing")
    assert len(waits) == 4
    for attempt, wait in enumerate(waits):
        assert 0.5 * 2 ** attempt * 0.75 <= wait <= 0.5 * 2 ** attempt * 1.25


def test_a_stalled_answer_times_out_as_upstream_unavailable(standin):
    store = _ready_store(standin, timeout=0.3, max_retries=1)
    standin.stall(1.0, times=2)
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailable) as raised:
        store.search("failing", vector=basis(4, 0), limit=1)
    assert "timed out" in raised.value.message
    assert 0.6 <= time.perf_counter() - started < 1.5  # two attempts of 0.3 s, not the SDK's four
    standin.stall(1.0)
    assert store.count("failing") == 2  # the retry got through


def test_a_broken_proxy_answer_is_upstream_unavailable(standin):
    store = _ready_store(standin, max_retries=0)
    standin.fail(200, raw_body="<html>captive portal</html>")
    with pytest.raises(UpstreamUnavailable) as raised:
        store.search("failing", vector=basis(4, 0), limit=1)
    assert raised.value.reason == "upstream_bad_response"
    standin.fail(502, raw_body="<html>Bad gateway</html>")
    with pytest.raises(UpstreamUnavailable):
        store.count("failing")


def test_a_refused_key_is_upstream_error_not_retried_and_never_shown(standin, caplog):
    secret = "pcsk_do-not-leak-this-key"
    store = store_on(standin, api_key=secret, index="failing", max_retries=3)
    assert secret not in repr(store)
    with caplog.at_level(logging.DEBUG):
        for name, call in FAILING_CALLS.items():
            standin.requests.clear()
            with pytest.raises(PluginError) as raised:
                call(store)
            assert raised.value.reason == "upstream_error" and not raised.value.retryable, name
            assert "API key" in raised.value.message and secret not in raised.value.message
            assert [r.status for r in standin.requests] == [401], name
    good = _ready_store(standin)  # a key revoked while the store runs: data-plane calls answer 401 too
    standin.fail(401, path="/query")
    with pytest.raises(PluginError) as raised:
        good.search("failing", vector=basis(4, 0), limit=1)
    assert raised.value.reason == "upstream_error" and len(standin.calls("/query")) == 1
    assert secret not in caplog.text and API_KEY not in caplog.text


def test_a_server_that_is_down_is_upstream_unavailable_fast():
    standin = PineconeStandin().start()
    store = store_on(standin, index="down", max_retries=1)
    store.ensure_namespace("down", 4)
    standin.stop()
    for name, call in FAILING_CALLS.items():
        if name == "ensure_namespace":
            continue  # known already: no call
        started = time.perf_counter()
        with pytest.raises(UpstreamUnavailable) as raised:
            call(store)
        assert "cannot reach Pinecone" in raised.value.message, name
        assert time.perf_counter() - started < 2.0, name
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    never = PineconeVectorStore(api_key="k", controller_host=f"http://127.0.0.1:{closed}", max_retries=0)
    with pytest.raises(UpstreamUnavailable):
        never.ensure_namespace("x", 4)


# --------------------------------------------------------------------------- readiness, gevent, options


def test_ready_is_one_cheap_round_trip(fresh_standin):
    store = store_on(fresh_standin, index="probe")
    store.ready(2.0)  # no index yet: ready, it is created on first use
    assert fresh_standin.indexes == {}
    store.ensure_namespace("p", 4)
    fresh_standin.requests.clear()
    store.ready(2.0)
    assert [(r.method, r.path) for r in fresh_standin.requests] == [("POST", "/describe_index_stats")]
    fresh_standin.fail(503)
    with pytest.raises(UpstreamUnavailable):
        store.ready(2.0)
    fresh_standin.stall(2.0)
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailable):
        store.ready(0.3)
    assert time.perf_counter() - started < 1.0
    wrong_key = store_on(fresh_standin, index="probe", api_key="wrong")
    with pytest.raises(PluginError) as raised:
        wrong_key.ready(2.0)
    assert raised.value.reason == "upstream_error"


GEVENT_PROBE = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent
from spacio_pinecone import PineconeVectorStore
store = PineconeVectorStore(api_key=sys.argv[2], controller_host=sys.argv[1], index="gevent", timeout=5)
store.ensure_namespace("gevent", 4)
store.upsert("gevent", [])
ticks = [0]
def ticker():
    while True:
        gevent.sleep(0.005)
        ticks[0] += 1
gevent.spawn(ticker)
gevent.sleep(0.05)
print("ready", flush=True)
sys.stdin.readline()  # the server is slow from now on
for call in (lambda: store.search("gevent", vector=[1.0, 0.0, 0.0, 0.0], limit=1), lambda: store.count("gevent")):
    ticks[0] = 0
    started = time.perf_counter()
    call()
    print(ticks[0], time.perf_counter() - started, flush=True)
store.close()
"""


def test_calls_do_not_stall_a_gevent_worker(standin):
    """``cpu_bound = False``: the store runs on the request's greenlet, so its HTTP calls must
    yield to gevent while they wait (0 ticks of the other greenlet if they blocked the hub)."""
    probe = subprocess.Popen([sys.executable, "-c", GEVENT_PROBE, standin.url, API_KEY],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready", probe.stderr.read()
        standin.stall(0.4, times=2)
        probe.stdin.write("go\n")
        probe.stdin.flush()
        for _ in range(2):
            ticks, seconds = probe.stdout.readline().split()
            assert float(seconds) >= 0.4
            assert int(ticks) >= 0.4 / 0.005 / 3
        assert probe.wait(timeout=30) == 0, probe.stderr.read()
    finally:
        probe.kill()
        probe.communicate()


def test_options_through_the_host_registry(standin, monkeypatch):
    monkeypatch.delenv("PINECONE_API_KEY", raising=False)
    config = {"SPACIO_VECTOR_STORE": "pinecone", "PLUGINS": {"VECTOR_STORE": {"PINECONE": {
        "API_KEY": API_KEY, "CONTROLLER_HOST": standin.url, "INDEX": "registry", "TIMEOUT": "7.5",
        "MAX_RETRIES": "1", "BATCH_SIZE": "50", "REGION": "eu-west-1"}}}}
    store = build("vector_store", "pinecone", config)
    assert isinstance(store, PineconeVectorStore) and isinstance(store, VectorStore)
    assert (store.index_name, store.timeout, store.max_retries, store.batch_size, store.region) == \
        ("registry", 7.5, 1, 50, "eu-west-1")
    store.ensure_namespace("registry", 4)
    assert store.count("registry") == 0
    store.close()


def test_options_defaults_env_fallback_and_validation(monkeypatch):
    monkeypatch.setenv("PINECONE_API_KEY", "  from-the-environment\n")
    store = PineconeVectorStore()
    assert store._api_key == "from-the-environment"
    assert (store.index_name, store.host, store.cloud, store.region, store.timeout, store.max_retries,
            store.batch_size) == ("spacio", None, "aws", "us-east-1", 15.0, 3, 100)
    assert "from-the-environment" not in repr(store)
    assert PineconeVectorStore(api_key="explicit")._api_key == "explicit"
    for host in ("spacio-abc.svc.aped-1.pinecone.io", "https://spacio-abc.svc.aped-1.pinecone.io/",
                 "http://localhost:5081", "http://10.0.0.7:8080/data/x"):
        assert PineconeVectorStore(api_key="k", host=host).host == host.rstrip("/")
    monkeypatch.delenv("PINECONE_API_KEY")
    with pytest.raises(ValueError, match="API key is required"):
        PineconeVectorStore()
    for bad in (dict(index="Upper"), dict(index="under_score"), dict(index="x" * 46), dict(cloud="ibm"),
                dict(timeout=0), dict(batch_size=1001), dict(max_retries=-1), dict(api_key="two words"),
                dict(host="  "), dict(host="no-dot"), dict(host="https://a b.io"), dict(controller_host="ftp://x.io"),
                dict(unknown=1)):
        with pytest.raises(ValueError):
            PineconeVectorStore(**{"api_key": "k", **bad})


def test_close_then_use_again(standin, options):
    store = PineconeVectorStore(**options, index="reopen")
    store.ensure_namespace("r", 4)
    store.close()
    store.close()  # twice is fine
    assert store.count("r") == 0  # opens again


# --------------------------------------------------------------------------- the real service

EXTERNAL_KEY = os.environ.get("PINECONE_API_KEY")
EXTERNAL = "set PINECONE_API_KEY (and PINECONE_TEST_INDEX, PINECONE_TEST_CLOUD, PINECONE_TEST_REGION) to run " \
           "against Pinecone"


def eventually(check, seconds=90.0):
    """Pinecone is eventually consistent: a write shows in reads within seconds."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (AssertionError, LookupError):  # e.g. no hit yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("Pinecone did not show the change in time")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def real_store():
    store = PineconeVectorStore(index=os.environ.get("PINECONE_TEST_INDEX", "spacio-test"),
                                cloud=os.environ.get("PINECONE_TEST_CLOUD", "aws"),
                                region=os.environ.get("PINECONE_TEST_REGION", "us-east-1"))
    yield store
    store.close()


@pytest.mark.external
@pytest.mark.skipif(not EXTERNAL_KEY, reason=EXTERNAL)
def test_against_pinecone(real_store):
    """The contract's main promises, waiting for Pinecone's eventual consistency."""
    dimensions = 8
    namespace = f"spacio-test-{uuid.uuid4()}"
    real_store.ensure_namespace(namespace, dimensions)
    try:
        first, second = new_document_id(), new_document_id()
        records = random_records(first, 120, dimensions, seed=1) + \
            [record(second, i, basis(dimensions, i), text=f"Grüße {i}", page=i + 1, metadata={"heading": None})
             for i in range(3)]
        real_store.upsert(namespace, records)
        eventually(lambda: real_store.count(namespace, document_id=first) == 120)
        eventually(lambda: real_store.count(namespace) == 123)
        target = records[7]
        eventually(lambda: real_store.search(namespace, vector=target.vector, limit=1)[0].id == target.id)
        hits = real_store.search(namespace, vector=basis(dimensions, 1), limit=5, document_ids=[second])
        assert [h.id for h in hits][0] == records[121].id and {h.document_id for h in hits} == {second}
        assert (hits[0].text, hits[0].page, dict(hits[0].metadata)) == ("Grüße 1", 2, {"heading": None})
        expected = sorted(records, key=lambda r: cosine(r.vector, target.vector), reverse=True)[:5]
        found = real_store.search(namespace, vector=target.vector, limit=5)
        assert [h.id for h in found] == [r.id for r in expected]
        assert found[1].score == pytest.approx(cosine(expected[1].vector, target.vector), abs=1e-3)
        real_store.delete_document(namespace, first)
        eventually(lambda: real_store.count(namespace, document_id=first) == 0)
        eventually(lambda: {h.document_id for h in real_store.search(namespace, vector=basis(dimensions, 0),
                                                                      limit=10)} == {second})
        with pytest.raises(PluginError) as raised:
            real_store.search(namespace, vector=basis(dimensions + 1, 0), limit=1)
        assert raised.value.reason == "pipeline_changed"
    finally:
        real_store.drop_namespace(namespace)
    eventually(lambda: real_store.count(namespace) == 0)


@pytest.mark.external
@pytest.mark.skipif(not EXTERNAL_KEY, reason=EXTERNAL)
def test_a_wrong_key_against_pinecone():
    store = PineconeVectorStore(api_key="pcsk_not-a-real-key",
                                index=os.environ.get("PINECONE_TEST_INDEX", "spacio-test"))
    with pytest.raises(PluginError) as raised:
        store.count("x")
    assert raised.value.reason == "upstream_error" and "pcsk_not-a-real-key" not in raised.value.message
