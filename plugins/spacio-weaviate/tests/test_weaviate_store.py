"""WeaviateVectorStore with the real weaviate-client against the stand-in (weaviate_standin.py),
and the same contract against a real Weaviate when WEAVIATE_URL is set (``external``)."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid

import numpy as np
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

from spacio.rag.contracts import PluginError, UpstreamUnavailable, VectorStore
from spacio.rag.registry import build
from spacio.testing.contracts.vector_store import (
    RARE_WORD,
    VectorStoreContract,
    basis,
    new_document_id,
    random_records,
    record,
    unit,
)
from spacio_weaviate import WeaviateVectorStore, tenant_name
from weaviate_standin import WeaviateStandin


def store_for(standin: WeaviateStandin, **options) -> WeaviateVectorStore:
    return WeaviateVectorStore(url=standin.url, grpc_port=standin.grpc_port, **options)


def raw_client(standin: WeaviateStandin) -> weaviate.WeaviateClient:
    return weaviate.connect_to_custom(http_host="127.0.0.1", http_port=standin.http_port, http_secure=False,
                                      grpc_host="127.0.0.1", grpc_port=standin.grpc_port, grpc_secure=False,
                                      skip_init_checks=True)


# --------------------------------------------------------------------------- the contract


class TestWeaviateContract(VectorStoreContract):
    """Every contract test, through weaviate-client 4 (REST + gRPC) against the stand-in."""

    crowd_size = 2000

    @pytest.fixture(scope="class")
    def vector_store(self, weaviate_standin):
        store = store_for(weaviate_standin)
        yield store
        store.close()


# --------------------------------------------------------------------------- Weaviate specifics


@pytest.fixture
def store(standin):
    store = store_for(standin)
    yield store
    store.close()


def test_constructor_does_no_io_and_connects_once_lazily(fresh_standin):
    store = store_for(fresh_standin)
    WeaviateVectorStore(url="http://127.0.0.1:9", grpc_port=10)  # nothing listens there: still fine
    assert sum(fresh_standin.calls.values()) == 0
    results = []
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        namespace = f"thread-{i}"
        store.ensure_namespace(namespace, 4)
        store.upsert(namespace, random_records(new_document_id(), 20, 4, seed=i))
        results.append(len(store.search(namespace, vector=basis(4, 0), limit=5)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [5] * 8
    assert fresh_standin.calls["GET /v1/meta"] == 1  # one client, shared by all threads
    assert fresh_standin.calls["POST /v1/schema"] == 1
    assert fresh_standin.calls["gRPC grpc.health.v1.Health/Check"] == 1
    store.close()


def test_the_client_uses_rest_for_schema_and_grpc_for_data(fresh_standin):
    store = store_for(fresh_standin)
    store.ensure_namespace("calls", 4)
    store.upsert("calls", random_records(new_document_id(), 3, 4))
    store.search("calls", vector=basis(4, 0), limit=2)
    store.search("calls", text=RARE_WORD, limit=2)
    store.search("calls", vector=basis(4, 0), text=RARE_WORD, limit=2)
    store.count("calls")
    store.delete_document("calls", new_document_id())
    store.drop_namespace("calls")
    store.close()
    assert set(fresh_standin.calls) == {
        "GET /v1/meta", "gRPC grpc.health.v1.Health/Check",
        "GET /v1/schema/{cls}", "POST /v1/schema", "POST /v1/schema/{cls}/tenants",
        "gRPC weaviate.v1.Weaviate/BatchObjects", "gRPC weaviate.v1.Weaviate/Search",
        "gRPC weaviate.v1.Weaviate/Aggregate", "gRPC weaviate.v1.Weaviate/BatchDelete",
        "DELETE /v1/schema/{cls}/tenants",
    }


def test_the_collection_is_multi_tenant_with_self_provided_cosine_vectors(store, standin):
    store.ensure_namespace("schema-check", 8)
    client = raw_client(standin)
    try:
        config = client.collections.use("SpacioChunk").config.get()
    finally:
        client.close()
    assert config.multi_tenancy_config.enabled
    assert not config.multi_tenancy_config.auto_tenant_creation
    assert list(config.vector_config) == ["default"]
    assert config.vector_config["default"].vectorizer.vectorizer == "none"
    assert config.vector_config["default"].vector_index_config.distance_metric == VectorDistances.COSINE
    props = {p.name: p for p in config.properties}
    assert {name: p.data_type for name, p in props.items()} == {
        "text": DataType.TEXT, "document_id": DataType.TEXT, "ordinal": DataType.INT, "page": DataType.INT,
        "metadata": DataType.TEXT}
    assert props["text"].tokenization == Tokenization.WORD and props["text"].index_searchable
    assert props["document_id"].tokenization == Tokenization.FIELD and not props["document_id"].index_searchable
    assert not props["metadata"].index_searchable and not props["metadata"].index_filterable
    store.drop_namespace("schema-check")


def test_one_tenant_per_namespace(store, standin):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    store.ensure_namespace(first, 4)
    store.ensure_namespace(second, 4)
    records = random_records(new_document_id(), 7, 4)
    store.upsert(first, records)
    store.upsert(first, records)  # replaced in place, not duplicated
    store.upsert(second, records[:2])
    client = raw_client(standin)
    try:
        collection = client.collections.use("SpacioChunk")
        tenants = collection.tenants.get()
        assert {first, second} <= set(tenants)
        stored = collection.with_tenant(first).query.fetch_objects(limit=100, include_vector=True).objects
        assert sorted(str(o.uuid) for o in stored) == sorted(r.id for r in records)
        assert len(collection.with_tenant(second).query.fetch_objects(limit=100).objects) == 2
        by_id = {str(o.uuid): o for o in stored}
        assert by_id[records[0].id].vector["default"] == pytest.approx(records[0].vector, abs=1e-6)
        store.drop_namespace(first)
        assert first not in collection.tenants.get() and second in collection.tenants.get()
    finally:
        client.close()
        store.drop_namespace(second)


def test_a_namespace_weaviate_cannot_name_gets_a_stable_tenant(store):
    odd, other = "space/ü 1", "space/ü 2"
    assert tenant_name(odd) == tenant_name(odd) != tenant_name(other)
    assert tenant_name(str(uuid.UUID(int=7))) == str(uuid.UUID(int=7))
    for name in (odd, other):
        store.ensure_namespace(name, 4)
    store.upsert(odd, [record(new_document_id(), 0, basis(4, 0), text=f"{RARE_WORD} here")])
    assert [h.ordinal for h in store.search(odd, text=RARE_WORD, limit=3)] == [0]
    assert store.search(other, text=RARE_WORD, limit=3) == []
    for name in (odd, other):
        store.drop_namespace(name)
    assert store.count(odd) == 0


def test_hybrid_query_uses_both_signals(standin, store):
    namespace = str(uuid.uuid4())
    store.ensure_namespace(namespace, 4)
    document = new_document_id()
    keyword_only = record(document, 0, basis(4, 3), text=f"The history of {RARE_WORD} in monasteries.")
    vector_only = record(document, 1, basis(4, 0, noise=0.05, seed=1), text="Stars form in nebulae.")
    neither = [record(document, 2 + i, basis(4, 1 + i % 2, noise=0.2, seed=i), text=f"Filler sentence number {i}.")
               for i in range(6)]
    store.upsert(namespace, [keyword_only, vector_only, *neither])
    query = dict(vector=basis(4, 0), text=RARE_WORD, limit=8)

    hybrid = store.search(namespace, **query)
    assert {h.id for h in hybrid[:2]} == {keyword_only.id, vector_only.id}
    assert len(hybrid) == 8  # the vector side fills the limit

    def search_with(**options):
        other = store_for(standin, **options)
        try:
            return other.search(namespace, **query)
        finally:
            other.close()

    vector_side = search_with(alpha=1.0)
    assert vector_side[0].id == vector_only.id
    assert vector_side[1].id != keyword_only.id  # orthogonal to the query: not second by vector alone

    keyword_side = search_with(alpha=0.0)
    assert [h.id for h in keyword_side] == [keyword_only.id]  # only records with the word

    ranked = search_with(fusion="ranked")
    assert [h.id for h in ranked[:2]] == [keyword_only.id, vector_only.id]  # first in one list, and in both
    assert ranked[1].score == pytest.approx(0.5 / 60, rel=1e-3)  # weight / (rank + 60): first by vector only
    store.drop_namespace(namespace)


def test_numpy_vectors_are_accepted(store):
    namespace = str(uuid.uuid4())
    store.ensure_namespace(namespace, 8)
    vectors = np.eye(8, dtype=np.float32)
    document = new_document_id()
    store.upsert(namespace, [record(document, i, vectors[i]) for i in range(8)])
    hits = store.search(namespace, vector=vectors[3], text=RARE_WORD, limit=2)
    assert hits[0].ordinal == 3
    assert store.search(namespace, vector=vectors[5], limit=1)[0].score == pytest.approx(1.0, abs=1e-6)
    store.drop_namespace(namespace)


def test_delete_document_loops_past_the_servers_result_cap():
    with WeaviateStandin(query_maximum_results=50) as standin:
        store = store_for(standin)
        store.ensure_namespace("capped", 4)
        big, small = new_document_id(), new_document_id()
        store.upsert("capped", random_records(big, 120, 4) + random_records(small, 3, 4))
        store.delete_document("capped", big)
        assert store.count("capped") == 3
        assert standin.calls["gRPC weaviate.v1.Weaviate/BatchDelete"] == 4  # 50 + 50 + 20, then nothing left
        store.close()


def test_large_upserts_are_split_under_the_grpc_message_limit(store, standin):
    """30 MB of 1536-dimension vectors with long texts: more than the server takes in one message."""
    namespace = str(uuid.uuid4())
    store.ensure_namespace(namespace, 1536)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2500, 1536)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    document = new_document_id()
    long_text = "lorem ipsum dolor sit amet " * 200  # ~5 kB
    before = standin.calls["gRPC weaviate.v1.Weaviate/BatchObjects"]
    store.upsert(namespace, [record(document, i, vectors[i], text=long_text) for i in range(2500)])
    assert store.count(namespace, document_id=document) == 2500
    assert standin.calls["gRPC weaviate.v1.Weaviate/BatchObjects"] - before == 8  # 4 MB each, not 500 objects
    assert store.search(namespace, vector=vectors[1234], limit=1)[0].ordinal == 1234
    store.drop_namespace(namespace)


def test_a_message_over_the_servers_limit_is_not_retryable(standin):
    store = store_for(standin, batch_size=100000)
    store.ensure_namespace("huge", 4)
    huge = "x" * (11 * 1024 * 1024)  # one object over the 10 MB limit
    with pytest.raises(PluginError) as raised:
        store.upsert("huge", [record(new_document_id(), 0, basis(4, 0), text=huge)])
    assert not raised.value.retryable
    store.drop_namespace("huge")
    store.close()


def test_upsert_into_a_namespace_that_was_never_ensured_is_a_clear_error(store):
    store.ensure_namespace("exists", 4)  # the collection exists; the tenant below does not
    with pytest.raises(PluginError) as raised:
        store.upsert("never-ensured", random_records(new_document_id(), 2, 4))
    assert not isinstance(raised.value, UpstreamUnavailable)
    assert "tenant not found" in raised.value.message
    store.drop_namespace("exists")


def test_a_vector_of_the_wrong_size_is_rejected_not_retried(store):
    namespace = str(uuid.uuid4())
    store.ensure_namespace(namespace, 4)
    store.upsert(namespace, random_records(new_document_id(), 2, 4))
    with pytest.raises(PluginError) as raised:
        store.upsert(namespace, random_records(new_document_id(), 2, 6))
    assert raised.value.reason == "vector_store_rejected" and not raised.value.retryable
    assert "length" in raised.value.message
    with pytest.raises(PluginError) as raised:
        store.search(namespace, vector=basis(6, 0), limit=1)
    assert raised.value.reason == "weaviate_error"
    store.drop_namespace(namespace)


def test_bad_records_and_queries_are_invalid_input(store):
    from spacio.rag.contracts import InvalidInput, VectorRecord

    store.ensure_namespace("inputs", 4)
    good = dict(document_id="d", ordinal=0, text="t", vector=[1.0, 0, 0, 0])
    for bad, reason in ((dict(good, id="not-a-uuid"), "invalid_record"),
                        (dict(good, id=str(uuid.uuid4()), metadata={"x": object()}), "invalid_metadata"),
                        (dict(good, id=str(uuid.uuid4()), vector=[math.nan, 0, 0, 0]), "invalid_vector")):
        with pytest.raises(InvalidInput) as raised:
            store.upsert("inputs", [VectorRecord(**bad)])
        assert raised.value.reason == reason
    with pytest.raises(InvalidInput):
        store.search("inputs", limit=3)
    assert store.search("inputs", vector=[1.0, 0, 0, 0], limit=3, document_ids=[]) == []
    assert store.count("inputs") == 0
    store.drop_namespace("inputs")


def test_an_existing_collection_that_is_not_multi_tenant_is_refused(standin):
    client = raw_client(standin)
    try:
        client.collections.create("PlainChunks", properties=[Property(name="text", data_type=DataType.TEXT)],
                                  vector_config=Configure.Vectors.self_provided(name="default"))
    finally:
        client.close()
    store = store_for(standin, collection="PlainChunks")
    with pytest.raises(PluginError) as raised:
        store.ensure_namespace("x", 4)
    assert raised.value.reason == "weaviate_schema" and "not multi-tenant" in raised.value.message
    store.close()


# --------------------------------------------------------------------------- errors


FAILING_CALLS = {
    "ensure_namespace": lambda s: s.ensure_namespace("failing", 4),
    "upsert": lambda s: s.upsert("failing", random_records(new_document_id(), 2, 4)),
    "vector search": lambda s: s.search("failing", vector=basis(4, 0), limit=3),
    "keyword search": lambda s: s.search("failing", text="budget", limit=3),
    "hybrid search": lambda s: s.search("failing", vector=basis(4, 0), text="budget", limit=3),
    "count": lambda s: s.count("failing"),
    "delete_document": lambda s: s.delete_document("failing", new_document_id()),
    "drop_namespace": lambda s: s.drop_namespace("failing"),
}


@pytest.mark.parametrize("http_status, grpc_code", [(503, "UNAVAILABLE"), (429, "RESOURCE_EXHAUSTED"),
                                                    (500, "DEADLINE_EXCEEDED")])
def test_server_errors_are_upstream_unavailable_at_once(standin, store, http_status, grpc_code):
    import grpc

    store.ensure_namespace("failing", 4)  # connected and set up before the server breaks
    standin.fail(http_status, getattr(grpc.StatusCode, grpc_code))
    for name, call in FAILING_CALLS.items():
        started = time.perf_counter()
        with pytest.raises(UpstreamUnavailable) as raised:
            call(store)
        assert raised.value.retryable, name
        assert time.perf_counter() - started < 1.0, name  # the client's own 63 s backoff is bypassed
    standin.recover()
    assert store.count("failing") == 0
    store.drop_namespace("failing")


def test_503_while_connecting_is_upstream_unavailable(standin):
    standin.fail(503)
    store = store_for(standin)
    with pytest.raises(UpstreamUnavailable):
        store.search("x", vector=basis(4, 0), limit=1)
    standin.recover()
    assert store.search("x", vector=basis(4, 0), limit=1) == []  # not connected before: connects now
    store.close()


def test_a_server_that_is_down_is_upstream_unavailable():
    standin = WeaviateStandin().start()
    store = store_for(standin)
    store.ensure_namespace("down", 4)
    standin.stop()
    for name, call in FAILING_CALLS.items():
        started = time.perf_counter()
        with pytest.raises(UpstreamUnavailable):
            call(store)
        assert time.perf_counter() - started < 2.0, name
    store.close()
    never = WeaviateVectorStore(url=f"http://127.0.0.1:{standin.http_port}", grpc_port=standin.grpc_port)
    with pytest.raises(UpstreamUnavailable) as raised:
        never.count("down")
    assert "Could not connect" in raised.value.message or "Connection" in raised.value.message


def test_a_wrong_grpc_port_fails_at_connect(standin):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = WeaviateVectorStore(url=standin.url, grpc_port=closed_port)
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailable) as raised:
        store.ensure_namespace("x", 4)
    assert "gRPC health check" in raised.value.message
    assert time.perf_counter() - started < 2.0
    with pytest.raises(ValueError, match="must differ"):
        WeaviateVectorStore(url=standin.url, grpc_port=standin.http_port)
    skipping = WeaviateVectorStore(url=standin.url, grpc_port=closed_port, skip_init_checks=True)
    with pytest.raises(UpstreamUnavailable):  # no check at connect: the first gRPC call fails instead
        skipping.search("x", vector=basis(4, 0), limit=1)
    skipping.close()


def test_timeouts_are_upstream_unavailable(standin, store):
    store.ensure_namespace("slow", 4)
    fast = store_for(standin, timeout_query=0.2, timeout_insert=0.2)
    fast.count("slow")  # connect first
    standin.delay = 0.6
    for call in (lambda: fast.search("slow", vector=basis(4, 0), limit=1),
                 lambda: fast.upsert("slow", random_records(new_document_id(), 1, 4))):
        with pytest.raises(UpstreamUnavailable) as raised:
            call()
        assert "DEADLINE_EXCEEDED" in raised.value.message
    fresh = store_for(standin, timeout_init=0.2)
    with pytest.raises(UpstreamUnavailable):
        fresh.count("slow")  # /v1/meta too slow
    standin.recover()
    fast.close()
    fresh.close()
    store.drop_namespace("slow")


def test_an_old_server_is_a_configuration_error_not_a_retry():
    with WeaviateStandin(version="1.26.3") as standin:
        with pytest.raises(PluginError) as raised:
            store_for(standin).count("x")
        assert raised.value.reason == "weaviate_unsupported" and not raised.value.retryable


def test_api_key_is_sent_and_a_missing_one_is_not_retryable(monkeypatch):
    with WeaviateStandin(api_key="secret-key") as standin:
        with pytest.raises(PluginError) as raised:
            store_for(standin).ensure_namespace("auth", 4)
        assert raised.value.reason == "weaviate_unauthorized" and not raised.value.retryable
        store = store_for(standin, api_key="secret-key")
        store.ensure_namespace("auth", 4)
        assert store.count("auth") == 0
        monkeypatch.setenv("WEAVIATE_API_KEY", "secret-key")
        from_env = store_for(standin)
        assert from_env.count("auth") == 0
        store.close()
        from_env.close()


GEVENT_PROBE = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent
from spacio_weaviate import WeaviateVectorStore
store = WeaviateVectorStore(url=sys.argv[1], grpc_port=int(sys.argv[2]))
store.ensure_namespace("gevent", 4)
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


def test_grpc_calls_do_not_stall_a_gevent_worker(standin):
    """Under ``gunicorn -k gevent`` a blocking grpcio call on the hub would freeze every other
    request of the worker; the store moves it to gevent's thread pool."""
    import subprocess
    import sys

    probe = subprocess.Popen([sys.executable, "-c", GEVENT_PROBE, standin.url, str(standin.grpc_port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready", probe.stderr.read()
        standin.delay = 0.4
        probe.stdin.write("go\n")
        probe.stdin.flush()
        for _ in range(2):
            ticks, seconds = probe.stdout.readline().split()
            assert float(seconds) >= 0.4
            assert int(ticks) >= 0.4 / 0.005 / 3  # other greenlets kept running (0 when blocked)
        assert probe.wait(timeout=30) == 0, probe.stderr.read()
    finally:
        standin.recover()
        probe.kill()
        probe.communicate()


GEVENT_ERROR_PROBE = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from spacio.rag.contracts import UpstreamUnavailable
from spacio_weaviate import WeaviateVectorStore
store = WeaviateVectorStore(url=sys.argv[1], grpc_port=int(sys.argv[2]), skip_init_checks=True)
gevent.sleep(0)  # the hub exists, as in a gevent worker
try:
    store.search("down", vector=[1.0, 0.0, 0.0, 0.0], limit=1)
except UpstreamUnavailable:
    print("unavailable", flush=True)
store.close()
"""


def test_an_error_off_the_gevent_hub_is_raised_in_the_caller_not_printed():
    """gevent's thread pool prints every exception that escapes a task to stderr, a raw
    traceback next to the host's JSON log line though the caller handles it (Weaviate down)."""
    import subprocess
    import sys

    down = WeaviateStandin().start()
    down.stop()
    probe = subprocess.run([sys.executable, "-c", GEVENT_ERROR_PROBE, down.url, str(down.grpc_port)],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "unavailable", probe.stderr
    assert "Traceback" not in probe.stderr, probe.stderr


# --------------------------------------------------------------------------- options


def test_options_through_the_host_registry(standin, monkeypatch):
    monkeypatch.delenv("WEAVIATE_URL", raising=False)
    config = {"SPACIO_VECTOR_STORE": "weaviate", "PLUGINS": {"VECTOR_STORE": {"WEAVIATE": {
        "URL": standin.url, "GRPC_PORT": str(standin.grpc_port), "ALPHA": "0.25", "TIMEOUT_QUERY": "7.5",
        "SKIP_INIT_CHECKS": "true"}}}}
    store = build("vector_store", "weaviate", config)
    assert isinstance(store, WeaviateVectorStore) and isinstance(store, VectorStore)
    assert (store.grpc_port, store.alpha, store.timeout.query, store.skip_init_checks) == \
        (standin.grpc_port, 0.25, 7.5, True)
    store.ensure_namespace("registry", 4)
    assert store.count("registry") == 0
    store.drop_namespace("registry")
    store.close()


def test_options_defaults_env_fallback_and_validation(monkeypatch):
    monkeypatch.setenv("WEAVIATE_URL", "https://weaviate.example.com")
    monkeypatch.delenv("WEAVIATE_API_KEY", raising=False)
    store = WeaviateVectorStore()
    assert (store.http_host, store.http_port, store.http_secure) == ("weaviate.example.com", 443, True)
    assert (store.grpc_host, store.grpc_port, store.grpc_secure) == ("weaviate.example.com", 50051, True)
    assert (store.collection_name, store.alpha, store.api_key, store.batch_size) == ("SpacioChunk", 0.5, None, 500)
    split = WeaviateVectorStore(url="http://rest.internal:8080", grpc_host="grpc.internal", grpc_port=6000)
    assert (split.http_port, split.grpc_host, split.grpc_port, split.grpc_secure) == (8080, "grpc.internal", 6000, False)
    monkeypatch.delenv("WEAVIATE_URL")
    with pytest.raises(ValueError, match="no Weaviate URL"):
        WeaviateVectorStore()
    for bad in (dict(url="weaviate:8080"), dict(url="ftp://h:1"), dict(url="http://h:notaport"),
                dict(url="http://h:8080/v1"), dict(url="http://h:1", collection="lower_case"),
                dict(url="http://h:1", alpha=1.5), dict(url="http://h:1", fusion="rrf"),
                dict(url="http://h:1", grpc_port=0), dict(url="http://h:1", timeout_query=0)):
        with pytest.raises(ValueError):
            WeaviateVectorStore(**bad)


def test_close_then_use_again_reconnects(fresh_standin):
    store = store_for(fresh_standin)
    store.ensure_namespace("reopen", 4)
    store.close()
    store.close()  # twice is fine
    assert store.count("reopen") == 0
    assert fresh_standin.calls["GET /v1/meta"] == 2
    store.close()


# --------------------------------------------------------------------------- a real Weaviate

EXTERNAL_URL = os.environ.get("WEAVIATE_URL")
external = [pytest.mark.external,
            pytest.mark.skipif(not EXTERNAL_URL, reason="set WEAVIATE_URL (and WEAVIATE_GRPC_PORT, "
                                                        "WEAVIATE_API_KEY if needed) to run against a real Weaviate")]


@pytest.fixture(scope="module")
def external_store():
    """A store on the real server, in a collection of its own that is deleted afterwards."""
    collection = "SpacioTest" + uuid.uuid4().hex[:12]
    store = WeaviateVectorStore(url=EXTERNAL_URL, grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
                                collection=collection)
    yield store
    try:
        store._client_or_connect().collections.delete(collection)
    finally:
        store.close()


class TestWeaviateContractExternal(VectorStoreContract):
    pytestmark = external

    @pytest.fixture
    def vector_store(self, external_store):
        return external_store


@pytest.mark.external
@pytest.mark.skipif(not EXTERNAL_URL, reason="set WEAVIATE_URL to run against a real Weaviate")
def test_external_hybrid_uses_both_signals_and_tenants(external_store):
    namespace = str(uuid.uuid4())
    external_store.ensure_namespace(namespace, 4)
    document = new_document_id()
    keyword_only = record(document, 0, basis(4, 3), text=f"The history of {RARE_WORD} in monasteries.")
    vector_only = record(document, 1, unit([1.0, 0.05, 0.0, 0.0]), text="Stars form in nebulae.")
    external_store.upsert(namespace, [keyword_only, vector_only,
                                      *[record(document, 2 + i, basis(4, 1 + i % 2, noise=0.2, seed=i),
                                               text=f"Filler sentence number {i}.") for i in range(6)]])
    hits = external_store.search(namespace, vector=basis(4, 0), text=RARE_WORD, limit=8)
    assert {h.id for h in hits[:2]} == {keyword_only.id, vector_only.id}
    client = external_store._client_or_connect()
    assert namespace in client.collections.use(external_store.collection_name).tenants.get()
    external_store.drop_namespace(namespace)
    assert namespace not in client.collections.use(external_store.collection_name).tenants.get()


# --------------------------------------------------------------------------- readiness (GET /ready)


def test_ready_when_weaviate_answers_its_readiness_endpoint(standin, store):
    store.ready(2.0)
    assert any("well-known/ready" in str(call) for call in standin.calls)


def test_not_ready_when_weaviate_fails_or_is_down(standin):
    store = store_for(standin)
    standin.fail(503)
    with pytest.raises(UpstreamUnavailable):
        store.ready(2.0)
    standin.recover()
    store.ready(2.0)
    store.close()

    down = WeaviateStandin().start()
    store = store_for(down)
    store.ready(2.0)
    down.stop()
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailable):
        store.ready(2.0)
    assert time.perf_counter() - started < 5.0
    store.close()
