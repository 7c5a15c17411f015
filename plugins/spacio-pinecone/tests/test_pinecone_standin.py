"""The stand-in speaks what the SDK expects and refuses what Pinecone refuses: driven here
with the bare ``pinecone`` SDK, so the store's tests rest on a faithful server."""

from __future__ import annotations

import pytest
from pinecone import ApiError, NotFoundError, Pinecone, RateLimitError, RetryConfig, UnauthorizedError

from pinecone_standin import API_KEY
from spacio_pinecone.store import _turn_off_sdk_retries

SCHEMA = {"fields": {"_values": {"type": "dense_vector", "dimension": 3, "metric": "cosine"}}}
DEPLOYMENT = {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"}


@pytest.fixture
def sdk(fresh_standin):
    client = Pinecone(api_key=API_KEY, host=fresh_standin.url, retry_config=RetryConfig(max_retries=0))
    yield client
    client.close()


def test_the_control_plane_round_trip(sdk, fresh_standin):
    model = sdk.indexes.create(name="shapes", schema=SCHEMA, deployment=DEPLOYMENT, timeout=10)
    assert (model.name, model.status.ready, model.dimension, model.metric) == ("shapes", True, 3, "cosine")
    assert model.deployment.cloud == "aws" and model.host == fresh_standin.host_of("shapes")
    assert [i.name for i in sdk.indexes.list()] == ["shapes"]
    assert sdk.indexes.describe("shapes").host == model.host
    with pytest.raises(ApiError) as raised:
        sdk.indexes.create(name="shapes", schema=SCHEMA, deployment=DEPLOYMENT, timeout=-1)
    assert raised.value.status_code == 409
    with pytest.raises(ApiError):
        sdk.indexes.create(name="documents", schema={"fields": {"body": {"type": "dense_vector", "dimension": 3,
                                                                          "metric": "cosine"}}}, timeout=-1)
    sdk.indexes.delete("shapes", timeout=10)
    assert not sdk.indexes.exists("shapes")
    with pytest.raises(NotFoundError):
        sdk.indexes.describe("shapes")


def test_the_data_plane_round_trip(sdk):
    sdk.indexes.create(name="data", schema=SCHEMA, deployment=DEPLOYMENT, timeout=10)
    index = sdk.index(name="data")
    written = index.upsert(vectors=[{"id": f"doc#{i}", "values": [1.0, i / 10, 0.0], "metadata": {
        "document_id": "doc", "ordinal": i, "tags": ["a", "b"]}} for i in range(150)] + [
        ("other#0", [0.0, 0.0, 1.0], {"document_id": "other"})], namespace="ns")
    assert written.upserted_count == 151
    result = index.query(vector=[1.0, 0.0, 0.0], top_k=2, namespace="ns", include_metadata=True,
                         filter={"document_id": {"$in": ["doc"]}, "ordinal": {"$lt": 5}})
    assert [m.id for m in result.matches] == ["doc#0", "doc#1"]
    assert result.matches[0].score == pytest.approx(1.0) and result.matches[0].metadata["ordinal"] == 0
    assert index.query(vector=[0.0, 0.0, 1.0], top_k=1, namespace="elsewhere").matches == []
    pages = list(index.list(prefix="doc#", namespace="ns"))
    assert [len(p.vectors) for p in pages] == [100, 50]
    assert index.fetch(ids=["other#0"], namespace="ns").vectors["other#0"].metadata == {"document_id": "other"}
    stats = index.describe_index_stats()
    assert (stats.dimension, stats.total_vector_count, stats.namespaces["ns"].vector_count) == (3, 151, 151)
    assert index.describe_namespace(name="ns").record_count == 151
    index.delete(ids=["other#0"], namespace="ns")
    with pytest.raises(ApiError) as raised:  # serverless: no delete by metadata
        index.delete(filter={"document_id": "doc"}, namespace="ns")
    assert raised.value.status_code == 400 and "metadata filtering" in raised.value.message
    index.delete_namespace(name="ns")
    with pytest.raises(NotFoundError):
        index.describe_namespace(name="ns")
    with pytest.raises(NotFoundError):
        index.delete(delete_all=True, namespace="ns")


def test_what_pinecone_refuses_it_refuses(sdk, fresh_standin):
    sdk.indexes.create(name="limits", schema=SCHEMA, deployment=DEPLOYMENT, timeout=10)
    index = sdk.index(name="limits")
    _turn_off_sdk_retries(index)  # it would sleep through the Retry-After below
    refused = {
        "a wrong dimension": lambda: index.upsert(vectors=[("a", [1.0, 0.0])], namespace="n"),
        # (objects and lists of numbers in metadata the SDK itself refuses)
        "a null in metadata": lambda: index.upsert(vectors=[("a", [1.0, 0, 0], {"x": None})], namespace="n"),
        "over 40 KB of metadata": lambda: index.upsert(vectors=[("a", [1.0, 0, 0], {"t": "x" * 41_000})],
                                                       namespace="n"),
        "over 1000 vectors": lambda: index.upsert(vectors=[(str(i), [1.0, 0, 0]) for i in range(1001)],
                                                  namespace="n"),
        "over 2 MB": lambda: index.upsert(vectors=[(str(i), [1.0, 0, 0], {"t": "x" * 30_000}) for i in range(80)],
                                          namespace="n"),
        "top_k over 1000 with metadata": lambda: index.query(vector=[1.0, 0, 0], top_k=1001, include_metadata=True),
        "a query of the wrong dimension": lambda: index.query(vector=[1.0, 0], top_k=1),
    }
    for what, call in refused.items():
        with pytest.raises(ApiError) as raised:
            call()
        assert raised.value.status_code == 400, what
    fresh_standin.fail(429, retry_after=7)
    with pytest.raises(RateLimitError) as raised:
        index.describe_index_stats()
    assert raised.value.retry_after == 7.0
    wrong = Pinecone(api_key="wrong", host=fresh_standin.url)
    with pytest.raises(UnauthorizedError):
        wrong.indexes.list().to_list()
    assert fresh_standin.requests[-1].headers["api-key"] == "wrong"
