"""``weaviate``: Spacio's vectors in a Weaviate server, through the official client (v4).

Why this shape:

- **One multi-tenant collection, one tenant per namespace.** Weaviate gives every tenant
  its own shard (own HNSW and inverted index), so a small space is never searched through
  a large one's vectors, dropping a space is a cheap tenant delete, and thousands of spaces
  do not mean thousands of collections (each collection costs schema and memory).
- **Self-provided vectors** in one named vector ``default`` with cosine distance: the host
  embeds; Weaviate only indexes. Vector search scores are ``1 - distance`` = cosine.
- **Keyword search is Weaviate's BM25** over ``text`` only; ``document_id`` is stored with
  ``field`` tokenization so the document filter is an exact match.
- **Our ids are Weaviate's uuids**, so a batch upsert replaces an object in place.
- **Fail fast, let the host retry.** The client retries gRPC ``UNAVAILABLE`` itself with
  exponential backoff (1+2+4+...+32 s = 63 s for a search). A search the user waits for must
  not hang that long, and the host already retries ``UpstreamUnavailable`` with backoff, so
  the store wraps the client's gRPC channel with an interceptor that turns UNAVAILABLE,
  DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED into ``UpstreamUnavailable`` at once.
- **No calls home.** The client's start-up checks include a request to pypi.org; the store
  connects with the client's checks off and runs the useful one (gRPC health) itself.
- **gevent-safe.** grpcio blocks the gevent hub (its sockets are not Python's), so calls
  made on the hub run on gevent's thread pool (``off_the_gevent_hub``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
import uuid
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import weaviate
from marshmallow import Schema, ValidationError, fields, validate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.classes.tenants import Tenant
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from spacio.rag.contracts import Hit, InvalidInput, PluginError, UpstreamUnavailable, VectorRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

VECTOR = "default"  # the one named vector of the collection
RETURN_PROPERTIES = ["text", "document_id", "ordinal", "page", "metadata"]
CLASS_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
TENANT_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")  # what Weaviate accepts as a tenant name
# a batch request stays under this many bytes (estimated): Weaviate's gRPC message limit is
# GRPC_MAX_MESSAGE_SIZE (10 MB on older servers), and a too large message is not retryable
BATCH_BYTES = 4 * 1024 * 1024
RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.RESOURCE_EXHAUSTED}
FUSIONS = {"relative_score": HybridFusion.RELATIVE_SCORE, "ranked": HybridFusion.RANKED}


class WeaviateOptions(Schema):
    url = fields.String(load_default=None, metadata={"description": "http(s)://host:port of the REST API; "
                                                     "default: the WEAVIATE_URL environment variable"})
    grpc_host = fields.String(load_default=None, metadata={"description": "default: the host of url"})
    grpc_port = fields.Integer(load_default=50051, validate=validate.Range(1, 65535))
    grpc_secure = fields.Boolean(load_default=None, metadata={"description": "TLS for gRPC; default: url is https"})
    api_key = fields.String(load_default=None, metadata={"description": "default: WEAVIATE_API_KEY"})
    collection = fields.String(load_default="SpacioChunk", validate=validate.Regexp(
        CLASS_NAME, error="must be a Weaviate class name: a capital letter, then letters, digits or _"))
    alpha = fields.Float(load_default=0.5, validate=validate.Range(0, 1),
                         metadata={"description": "hybrid weight of the vector side (0 = keyword only)"})
    fusion = fields.String(load_default="relative_score", validate=validate.OneOf(sorted(FUSIONS)))
    timeout_query = fields.Float(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False))
    timeout_insert = fields.Float(load_default=90.0, validate=validate.Range(min=0, min_inclusive=False))
    timeout_init = fields.Float(load_default=5.0, validate=validate.Range(min=0, min_inclusive=False))
    skip_init_checks = fields.Boolean(load_default=False,
                                      metadata={"description": "skip the gRPC health check on connect"})
    batch_size = fields.Integer(load_default=500, validate=validate.Range(1, 100000),
                                metadata={"description": "objects per gRPC batch request at most"})


class _RetryableRpc(Exception):
    """A gRPC call failed in a way worth retrying later; raised past the client's own retry."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str | None):
        super().__init__(f"{method}: {code.name} {details or ''}".strip())
        self.method, self.code, self.details = method, code, details


class _FailFast(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(client_call_details, request)
        code = outcome.code()
        if code in RETRYABLE_GRPC and not _too_large(code, outcome.details()):
            raise _RetryableRpc(client_call_details.method, code, outcome.details())
        return outcome


def _too_large(code: grpc.StatusCode, details: str | None) -> bool:
    """RESOURCE_EXHAUSTED also means "message larger than max": no retry fixes that."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or "")


def off_the_gevent_hub(work: Callable[[], T]) -> T:
    """Run ``work`` on gevent's pool of real threads when called on the main gevent hub.

    grpcio's blocking calls do not yield to gevent (its sockets are not Python's): called on
    the hub of a ``gunicorn -k gevent`` worker, one search stalls every request and stream of
    that worker for its whole duration (measured: 0 switches to other greenlets during a
    500 ms call; REST through httpx cooperates). Anywhere else (no gevent, a real thread, a
    thread pool) it runs right here."""
    if "gevent" not in sys.modules:
        return work()
    try:
        from gevent._hub_local import get_hub_if_exists  # without creating a hub where there is none
    except ImportError:  # pragma: no cover - a gevent that moved it: call directly
        return work()
    hub = get_hub_if_exists()
    if hub is None or not hub.main_hub:
        return work()
    ok, outcome = hub.threadpool.apply(_outcome, (work,))
    if ok:
        return outcome
    try:
        raise outcome  # here, in the caller: gevent's pool prints what escapes a task to stderr
    finally:
        outcome = None


def _outcome(work: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, work()
    except Exception as exc:
        return False, exc


def tenant_name(namespace: str) -> str:
    """The tenant of a namespace: the name itself when Weaviate accepts it (a space id
    does), else a stable digest of it."""
    if TENANT_NAME.fullmatch(namespace):
        return namespace
    return "ns-" + hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:48]


class WeaviateVectorStore:
    """A ``VectorStore`` in one multi-tenant Weaviate collection. Thread-safe; share one
    instance (it holds one client: an HTTP connection pool and a gRPC channel)."""

    options_schema = WeaviateOptions

    def __init__(self, url: str | None = None, grpc_host: str | None = None, grpc_port: int = 50051,
                 grpc_secure: bool | None = None, api_key: str | None = None, collection: str = "SpacioChunk",
                 alpha: float = 0.5, fusion: str = "relative_score", timeout_query: float = 30.0,
                 timeout_insert: float = 90.0, timeout_init: float = 5.0, skip_init_checks: bool = False,
                 batch_size: int = 500):
        try:  # validated by the host already; this covers direct construction
            options = WeaviateOptions().load({k: v for k, v in locals().items() if k != "self" and v is not None})
        except ValidationError as error:
            raise ValueError(f"invalid Weaviate options: {error.messages}") from error
        url = options["url"] or os.environ.get("WEAVIATE_URL")
        if not url:
            raise ValueError("no Weaviate URL: set SPACIO_PLUGINS__VECTOR_STORE__WEAVIATE__URL "
                             "(or WEAVIATE_URL) to http(s)://host:port")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.path.strip("/"):
            raise ValueError(f"the Weaviate URL must look like http(s)://host:port, not {url!r}")
        self.http_secure = parts.scheme == "https"
        self.http_host = parts.hostname
        self.http_port = port or (443 if self.http_secure else 80)
        self.grpc_host = options["grpc_host"] or self.http_host
        self.grpc_port = options["grpc_port"]
        self.grpc_secure = self.http_secure if options["grpc_secure"] is None else options["grpc_secure"]
        if (self.grpc_host, self.grpc_port) == (self.http_host, self.http_port):
            raise ValueError(f"the Weaviate gRPC port must differ from the REST port ({self.http_port}); "
                             "set option grpc_port (Weaviate's default is 50051)")
        self.api_key = options["api_key"] or os.environ.get("WEAVIATE_API_KEY") or None
        self.collection_name = options["collection"]
        self.alpha = options["alpha"]
        self.fusion = FUSIONS[options["fusion"]]
        self.timeout = Timeout(query=options["timeout_query"], insert=options["timeout_insert"],
                               init=options["timeout_init"])
        self.skip_init_checks = options["skip_init_checks"]
        self.batch_size = options["batch_size"]
        self._client: weaviate.WeaviateClient | None = None
        self._lock = threading.RLock()
        self._collection_ready = False

    def __repr__(self) -> str:
        scheme = "https" if self.http_secure else "http"
        return f"WeaviateVectorStore({scheme}://{self.http_host}:{self.http_port}, {self.collection_name})"

    # ------------------------------------------------------------------ connection

    def _connect(self) -> weaviate.WeaviateClient:
        client = weaviate.connect_to_custom(
            http_host=self.http_host, http_port=self.http_port, http_secure=self.http_secure,
            grpc_host=self.grpc_host, grpc_port=self.grpc_port, grpc_secure=self.grpc_secure,
            auth_credentials=Auth.api_key(self.api_key) if self.api_key else None,
            additional_config=AdditionalConfig(timeout=self.timeout),
            skip_init_checks=True,  # its checks call pypi.org; the one that matters runs below
        )
        try:
            self._fail_fast(client)
            if not self.skip_init_checks:
                self._check_grpc(client)
        except BaseException:
            client.close()
            raise
        return client

    def _fail_fast(self, client: weaviate.WeaviateClient) -> None:
        """Route the client's gRPC calls through ``_FailFast`` (see the module docstring).
        Uses the client's private connection attributes: if a client version renames them,
        the store still works, with the client's own (slow) retries."""
        connection = getattr(client, "_connection", None)
        channel = getattr(connection, "_grpc_channel", None)
        if isinstance(channel, grpc.Channel) and hasattr(connection, "_grpc_stub"):
            from weaviate.proto.v1 import weaviate_pb2_grpc

            connection._grpc_stub = weaviate_pb2_grpc.WeaviateStub(grpc.intercept_channel(channel, _FailFast()))
        else:
            log.warning("weaviate: cannot wrap the client's gRPC channel (client %s); gRPC UNAVAILABLE will be "
                        "retried by the client for up to a minute", weaviate.__version__)

    def _check_grpc(self, client: weaviate.WeaviateClient) -> None:
        """The gRPC health check the client runs at start-up (without its PyPI version check):
        a wrong gRPC port fails here, with a clear message, not at the first search."""
        connection = client._connection
        ping = getattr(connection, "_ping_grpc", None)
        if ping is not None:
            ping("sync")

    def _client_or_connect(self) -> weaviate.WeaviateClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def ready(self, timeout: float) -> None:
        """Readiness: the client's ``is_ready()`` (Weaviate's ``/v1/.well-known/ready``) is
        true. Raises ``UpstreamUnavailable`` otherwise. The host gives up after ``timeout``;
        the client's own timeouts (``timeout_init``, ``timeout_query``) end the call."""
        def work() -> bool:
            return self._client_or_connect().is_ready()

        if not self._call("readiness check", work):
            raise UpstreamUnavailable("Weaviate is not ready (/v1/.well-known/ready)")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._collection_ready = False
        if client is not None:
            client.close()

    def _collection(self, namespace: str):
        return self._client_or_connect().collections.use(self.collection_name).with_tenant(tenant_name(namespace))

    # ------------------------------------------------------------------ errors

    def _call(self, what: str, work: Callable[[], T]) -> T:
        """Run ``work`` against Weaviate (off the gevent hub); map every client exception to
        the contract's errors."""
        try:
            return off_the_gevent_hub(work)
        except PluginError:
            raise
        except Exception as error:  # mapped, never swallowed
            raise translate(error, what) from error

    def _missing(self, namespace: str) -> bool:
        """Whether the namespace's tenant (or the whole collection) does not exist: how a
        failed read tells "nothing here" from a real error."""
        client = self._client_or_connect()
        try:
            return not client.collections.use(self.collection_name).tenants.exists(tenant_name(namespace))
        except UnexpectedStatusCodeError as error:
            if error.status_code in (404, 422):
                return not client.collections.exists(self.collection_name)
            raise

    def _read(self, namespace: str, what: str, work: Callable[[], T], empty: T) -> T:
        """A read of one namespace: a missing tenant or collection reads as ``empty``."""
        def guarded() -> T:
            try:
                return work()
            except (_RetryableRpc, PluginError):
                raise
            except WeaviateBaseError:
                if self._missing(namespace):
                    return empty
                raise
        return self._call(what, guarded)

    # ------------------------------------------------------------------ schema

    def _ensure_collection(self) -> None:
        if self._collection_ready:
            return
        with self._lock:
            if self._collection_ready:
                return
            client = self._client_or_connect()
            if not client.collections.exists(self.collection_name):
                try:
                    self._create_collection(client)
                except UnexpectedStatusCodeError as error:  # another process created it meanwhile
                    if error.status_code != 422 or not client.collections.exists(self.collection_name):
                        raise
            config = client.collections.use(self.collection_name).config.get()
            if not config.multi_tenancy_config.enabled:
                raise PluginError(f"The Weaviate collection {self.collection_name} exists but is not multi-tenant; "
                                  "choose another collection name (option collection).", reason="weaviate_schema")
            if VECTOR not in (config.vector_config or {}):
                raise PluginError(f"The Weaviate collection {self.collection_name} exists without the named vector "
                                  f"{VECTOR!r}; choose another collection name (option collection).",
                                  reason="weaviate_schema")
            self._collection_ready = True

    def _create_collection(self, client: weaviate.WeaviateClient) -> None:
        client.collections.create(
            self.collection_name,
            description="Spacio chunks: one tenant per space",
            multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=False),
            vector_config=Configure.Vectors.self_provided(
                name=VECTOR, vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
            properties=[
                Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
                Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                         index_searchable=False),
                Property(name="ordinal", data_type=DataType.INT),
                Property(name="page", data_type=DataType.INT, index_filterable=False),
                Property(name="metadata", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
            ],
        )

    # ------------------------------------------------------------------ the contract

    def ensure_namespace(self, namespace: str, dimensions: int) -> None:
        """Create the namespace's tenant (and the collection on first use). ``dimensions``
        needs no declaring: each tenant's index takes the size of its first vector."""
        def work() -> None:
            self._ensure_collection()
            tenants = self._client_or_connect().collections.use(self.collection_name).tenants
            try:
                tenants.create([Tenant(name=tenant_name(namespace))])
            except UnexpectedStatusCodeError as error:  # already there (or a concurrent create)
                if error.status_code != 422 or not tenants.exists(tenant_name(namespace)):
                    self._collection_ready = False  # deleted behind our back? look again next time
                    raise
        self._call("ensure namespace", work)

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        batches = _batches([_data_object(record) for record in records], self.batch_size, BATCH_BYTES)

        def work() -> None:
            collection = self._collection(namespace)
            for batch in batches:
                result = collection.data.insert_many(batch)
                if result.errors:
                    messages = sorted({e.message for e in result.errors.values()})
                    raise PluginError(f"Weaviate rejected {len(result.errors)} of {len(batch)} records in namespace "
                                      f"{namespace!r}: {'; '.join(messages)[:500]}", reason="vector_store_rejected")
        self._call("upsert", work)

    def search(self, namespace: str, *, vector: Sequence[float] | None = None, text: str | None = None,
               limit: int = 10, document_ids: Sequence[str] | None = None) -> list[Hit]:
        if vector is None and text is None:
            raise InvalidInput("A search needs a vector, a text or both.", reason="empty_query")
        query_vector = _floats(vector) if vector is not None else None
        query_text = text.replace("\x00", " ").strip() if text is not None else ""
        if limit <= 0 or (document_ids is not None and not document_ids):
            return []
        if query_vector is None and not query_text:
            return []  # a blank keyword query matches nothing
        where = None
        if document_ids is not None:
            ids = list(dict.fromkeys(str(d) for d in document_ids))
            where = Filter.by_property("document_id").equal(ids[0]) if len(ids) == 1 else \
                Filter.by_property("document_id").contains_any(ids)

        def work() -> list[Hit]:
            query = self._collection(namespace).query
            common = dict(limit=limit, filters=where, return_properties=RETURN_PROPERTIES)
            if query_vector is not None and query_text:
                result = query.hybrid(query=query_text, vector=query_vector, alpha=self.alpha,
                                      fusion_type=self.fusion, query_properties=["text"], target_vector=VECTOR,
                                      return_metadata=MetadataQuery(score=True), **common)
                return [_hit(o, o.metadata.score) for o in result.objects]
            if query_vector is not None:
                result = query.near_vector(near_vector=query_vector, target_vector=VECTOR,
                                           return_metadata=MetadataQuery(distance=True), **common)
                return [_hit(o, 1.0 - o.metadata.distance) for o in result.objects]
            result = query.bm25(query=query_text, query_properties=["text"],
                                return_metadata=MetadataQuery(score=True), **common)
            return [_hit(o, o.metadata.score) for o in result.objects]
        return self._read(namespace, "search", work, [])

    def delete_document(self, namespace: str, document_id: str) -> None:
        def work() -> None:
            data = self._collection(namespace).data
            where = Filter.by_property("document_id").equal(str(document_id))
            while True:  # one call deletes at most QUERY_MAXIMUM_RESULTS (10,000 by default) objects
                result = data.delete_many(where=where)
                if result.failed:
                    raise PluginError(f"Weaviate failed to delete {result.failed} chunks of document {document_id} "
                                      f"in namespace {namespace!r}.", reason="vector_store_rejected")
                if result.matches == 0 or result.successful == 0:
                    return
        self._read(namespace, "delete document", work, None)

    def drop_namespace(self, namespace: str) -> None:
        def work() -> None:
            try:
                self._client_or_connect().collections.use(self.collection_name).tenants.remove(
                    [tenant_name(namespace)])
            except UnexpectedStatusCodeError as error:
                if error.status_code in (404, 422) and self._missing(namespace):
                    return
                raise
        self._call("drop namespace", work)

    def count(self, namespace: str, document_id: str | None = None) -> int:
        where = Filter.by_property("document_id").equal(str(document_id)) if document_id is not None else None

        def work() -> int:
            result = self._collection(namespace).aggregate.over_all(total_count=True, filters=where)
            return int(result.total_count or 0)
        return self._read(namespace, "count", work, 0)


# --------------------------------------------------------------------------- helpers


def _floats(vector: Sequence[float]) -> list[float]:
    """Plain Python floats: the client's fast paths test ``isinstance(v[0], float)``, which
    numpy float32 fails; NaN or infinity would poison the index. (A numpy row converts with
    ``tolist()``, 10x faster than float() per value; the finiteness test is one ``sum``:
    NaN and infinity propagate, and unit vectors cannot overflow.)"""
    try:
        tolist = getattr(vector, "tolist", None)
        values = tolist() if tolist is not None else [float(v) for v in vector]
        if not isinstance(values, list) or (values and not isinstance(values[0], float)):
            values = [float(v) for v in values]
        total = sum(values)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"A vector must be a sequence of numbers: {error}", reason="invalid_vector") from error
    if not values or not math.isfinite(total):
        raise InvalidInput("A vector must be non-empty and finite.", reason="invalid_vector")
    return values


def _data_object(record: VectorRecord) -> DataObject:
    try:
        object_id = uuid.UUID(str(record.id))
    except ValueError as error:
        raise InvalidInput(f"Record id {record.id!r} is not a UUID.", reason="invalid_record") from error
    try:
        metadata = json.dumps(dict(record.metadata or {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"Metadata of record {record.id} is not JSON: {error}", reason="invalid_metadata") from error
    properties: dict[str, Any] = {"text": record.text, "document_id": str(record.document_id),
                                  "ordinal": int(record.ordinal), "metadata": metadata}
    if record.page is not None:
        properties["page"] = int(record.page)
    return DataObject(uuid=object_id, properties=properties, vector={VECTOR: _floats(record.vector)})


def _batches(objects: list[DataObject], most: int, budget: int) -> list[list[DataObject]]:
    """Consecutive batches of at most ``most`` objects and about ``budget`` bytes on the wire
    (4 bytes a vector value, the UTF-8 text and metadata, some overhead)."""
    batches: list[list[DataObject]] = []
    current: list[DataObject] = []
    size = 0
    for obj in objects:
        props = obj.properties
        weight = 4 * len(obj.vector[VECTOR]) + len(props["text"].encode("utf-8")) + len(props["metadata"]) + 200
        if current and (len(current) >= most or size + weight > budget):
            batches.append(current)
            current, size = [], 0
        current.append(obj)
        size += weight
    if current:
        batches.append(current)
    return batches


def _hit(obj: Any, score: float | None) -> Hit:
    props = obj.properties
    page = props.get("page")
    raw = props.get("metadata")
    try:
        metadata = json.loads(raw) if raw else {}
    except ValueError:  # written by something else than this store
        metadata = {"raw": raw}
    return Hit(id=str(obj.uuid), document_id=str(props.get("document_id", "")), ordinal=int(props.get("ordinal", 0)),
               text=props.get("text") or "", score=float(score if score is not None else 0.0),
               page=int(page) if page is not None else None, metadata=metadata if isinstance(metadata, dict) else {})


def translate(error: BaseException, what: str) -> PluginError:
    """The contract error for an exception from the client: connection failures, timeouts,
    429 and 5xx are ``UpstreamUnavailable`` (the host retries); the rest a ``PluginError``."""
    prefix = f"Weaviate {what} failed"
    if isinstance(error, _RetryableRpc):
        return UpstreamUnavailable(f"{prefix}: gRPC {error.code.name} ({error.details or 'no details'})")
    if isinstance(error, WeaviateGRPCUnavailableError):
        return UpstreamUnavailable(f"{prefix}: the gRPC health check did not answer (check the options grpc_host, "
                                   "grpc_port and grpc_secure, and that gRPC is reachable)")
    if isinstance(error, (WeaviateConnectionError, WeaviateTimeoutError, httpx.TransportError)):
        return UpstreamUnavailable(f"{prefix}: {_short(error)}")
    if isinstance(error, WeaviateStartUpError):  # connection trouble, or a server too old for the client
        if error.__cause__ is not None:
            return UpstreamUnavailable(f"{prefix}: {_short(error)}")
        return PluginError(f"{prefix}: {_short(error)}", reason="weaviate_unsupported")
    if isinstance(error, WeaviateInsertManyAllFailedError):  # every object of a batch refused
        return PluginError(f"{prefix}: {_short(error)}", reason="vector_store_rejected")
    if isinstance(error, UnexpectedStatusCodeError):
        status = error.status_code
        if status == 429 or status >= 500:
            return UpstreamUnavailable(f"{prefix}: HTTP {status}")
        if status in (401, 403):
            return PluginError(f"{prefix}: HTTP {status}, check the API key and its permissions ({_short(error)})",
                               reason="weaviate_unauthorized")
        return PluginError(f"{prefix}: HTTP {status}: {error.error or _short(error)}", reason="weaviate_error")
    rpc = _rpc_error(error)
    if rpc is not None and rpc.code() in RETRYABLE_GRPC and not _too_large(rpc.code(), rpc.details()):
        return UpstreamUnavailable(f"{prefix}: gRPC {rpc.code().name} ({rpc.details()})")
    if rpc is not None and rpc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return PluginError(f"{prefix}: gRPC {rpc.code().name}, check the API key and its permissions",
                           reason="weaviate_unauthorized")
    if isinstance(error, WeaviateBaseError):
        return PluginError(f"{prefix}: {_short(error)}", reason="weaviate_error")
    return PluginError(f"{prefix}: {error.__class__.__name__}: {error}", reason="weaviate_error")


def _rpc_error(error: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind a client exception (the client raises its own from it)."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(current, grpc.RpcError) and hasattr(current, "code"):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:400] + ("…" if len(text) > 400 else "")
