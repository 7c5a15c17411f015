"""A tiny in-memory Weaviate for tests: the REST and gRPC endpoints weaviate-client v4 uses.

No package ships a Weaviate server and embedded Weaviate downloads a binary, so the plugin
is tested with the real ``weaviate-client`` against this stand-in on 127.0.0.1. It speaks
the wire protocols for real: REST through werkzeug, gRPC through grpcio with the client's
own generated protobuf classes (``weaviate.proto.v1``), so every request is encoded and
decoded exactly as against a server.

It is small but honest where results depend on it:

- vector search is exact, with the collection's distance (cosine = 1 - cos similarity);
- keyword search is BM25 (k1=1.2, b=0.75, Weaviate's ``word`` tokenizer and English
  stopwords, idf over the tenant), with OR/AND operators and ``prop^boost`` weights;
- hybrid fuses both like Weaviate: relative-score fusion (default) or ranked fusion;
- filters (equal, not-equal, comparisons, like, is-null, contains-any/all/none,
  and/or/not) follow the property's tokenization and refuse non-filterable properties;
- one shard per tenant, per-shard vector dimensions, batch errors per object, a
  ``QUERY_MAXIMUM_RESULTS`` cap on searches and deletes.

What is not implemented answers UNIMPLEMENTED (gRPC) or 501 (REST), never a wrong result.

Use ``WeaviateStandin().start()`` (or the ``weaviate_standin`` fixture in conftest.py);
``fail(...)``/``recover()`` make every request answer an error, ``delay`` slows answers.
``calls`` counts the endpoints the client used.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import math
import re
import struct
import threading
import time
import uuid as uuid_lib
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import grpc
from google.protobuf import json_format
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

DEFAULT_VERSION = "1.32.4"
GRPC_MAX_MESSAGE_SIZE = 10 * 1024 * 1024  # Weaviate's GRPC_MAX_MESSAGE_SIZE (the stricter, older default)
K1, B = 1.2, 0.75
# Weaviate's "en" stopword preset (entities/stopwords/presets.go)
EN_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
CLASS_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
PROPERTY_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")
TENANT_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")
RESERVED_PROPERTIES = {"_additional", "_id", "id"}
PRIMITIVE_TYPES = {"text", "int", "number", "boolean", "date", "uuid", "blob",
                   "text[]", "int[]", "number[]", "boolean[]", "date[]", "uuid[]"}

HNSW_DEFAULTS = {
    "skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128,
    "ef": -1, "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1000000000000, "flatSearchCutoff": 40000, "distance": "cosine",
    "filterStrategy": "sweeping",
    "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256, "trainingLimit": 100000,
           "encoder": {"type": "kmeans", "distribution": "log-normal"}},
    "bq": {"enabled": False}, "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "rq": {"enabled": False, "bits": 8, "rescoreLimit": 20},
    "multivector": {"enabled": False, "muvera": {"enabled": False, "ksim": 4, "dprojections": 16,
                                                 "repetitions": 10}, "aggregation": "maxSim"},
}
FLAT_DEFAULTS = {"distance": "cosine", "vectorCacheMaxObjects": 1000000000000,
                 "pq": {"enabled": False}, "bq": {"enabled": False}, "sq": {"enabled": False}}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # tests count calls in ``calls`` instead
        pass


class StandinError(Exception):
    """An error the stand-in answers with (REST status / gRPC code and message)."""

    def __init__(self, message: str, status: int = 422, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def _unimplemented(what: str) -> StandinError:
    return StandinError(f"the Weaviate stand-in does not implement {what}", 501, grpc.StatusCode.UNIMPLEMENTED)


# --------------------------------------------------------------------------- data


@dataclass
class StoredObject:
    uuid: str
    properties: dict[str, Any]
    vectors: dict[str, list[float]]
    created_ms: int
    updated_ms: int


@dataclass
class Shard:
    """One tenant of a multi-tenant class, or the only shard of a plain class."""

    objects: dict[str, StoredObject] = field(default_factory=dict)
    dimensions: dict[str, int] = field(default_factory=dict)


@dataclass
class StoredClass:
    config: dict[str, Any]
    shards: dict[str, Shard]  # tenant name -> shard; "" for a class without multi-tenancy

    @property
    def name(self) -> str:
        return self.config["class"]

    @property
    def multi_tenant(self) -> bool:
        return bool(self.config["multiTenancyConfig"]["enabled"])

    def prop(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.config["properties"] if p["name"] == name), None)

    def vector_names(self) -> list[str]:
        return list(self.config.get("vectorConfig", {})) or ["default"]

    def distance_metric(self, vector_name: str) -> str:
        if "vectorConfig" in self.config:
            return self.config["vectorConfig"][vector_name]["vectorIndexConfig"].get("distance", "cosine")
        return self.config.get("vectorIndexConfig", {}).get("distance", "cosine")


def complete_class(body: dict[str, Any]) -> dict[str, Any]:
    """The class config as Weaviate answers it: every default filled in. The client parses
    the full shape (``indexFilterable``, ``bm25``, ``replicationConfig``...) and fails on gaps."""
    if not isinstance(body, dict) or not isinstance(body.get("class"), str) or not body["class"]:
        raise StandinError("class name is required")
    name = body["class"][0].upper() + body["class"][1:]
    if not CLASS_NAME.match(name):
        raise StandinError(f"'{body['class']}' is not a valid class name")
    inverted = body.get("invertedIndexConfig") or {}
    stopwords = {"preset": "en", "additions": None, "removals": None, **(inverted.get("stopwords") or {})}
    config: dict[str, Any] = {
        "class": name,
        "invertedIndexConfig": {
            "bm25": {"b": B, "k1": K1, **(inverted.get("bm25") or {})},
            "cleanupIntervalSeconds": inverted.get("cleanupIntervalSeconds", 60),
            "indexNullState": inverted.get("indexNullState", False),
            "indexPropertyLength": inverted.get("indexPropertyLength", False),
            "indexTimestamps": inverted.get("indexTimestamps", False),
            "stopwords": stopwords,
            "usingBlockMaxWAND": True,
        },
        "multiTenancyConfig": {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False,
                               **(body.get("multiTenancyConfig") or {})},
        "replicationConfig": {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution",
                              **(body.get("replicationConfig") or {})},
        "shardingConfig": {"virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1,
                           "desiredVirtualCount": 128, "actualVirtualCount": 128, "key": "_id",
                           "strategy": "hash", "function": "murmur3"},
        "properties": [],
    }
    if body.get("description"):
        config["description"] = body["description"]
    if config["multiTenancyConfig"]["autoTenantCreation"]:
        raise _unimplemented("autoTenantCreation")
    seen = set()
    for prop in body.get("properties") or []:
        pname = prop.get("name", "")
        if not PROPERTY_NAME.match(pname) or pname in RESERVED_PROPERTIES:
            raise StandinError(f"'{pname}' is not a valid property name")
        if pname.lower() in seen:
            raise StandinError(f"class \"{name}\": conflict for property \"{pname}\": already in use or provided multiple times")
        seen.add(pname.lower())
        data_type = prop.get("dataType") or []
        if len(data_type) != 1 or data_type[0] not in PRIMITIVE_TYPES:
            raise _unimplemented(f"property data type {data_type} (primitive types only)")
        is_text = data_type[0] in ("text", "text[]")
        tokenization = prop.get("tokenization") or ("word" if is_text else None)
        if tokenization is not None and not is_text:
            raise StandinError(f"Tokenization is not allowed for data type '{data_type[0]}'")
        if tokenization not in (None, "word", "lowercase", "whitespace", "field"):
            raise _unimplemented(f"tokenization {tokenization!r}")
        config["properties"].append({
            "name": pname, "dataType": data_type, "description": prop.get("description"),
            "indexFilterable": prop.get("indexFilterable", True),
            "indexSearchable": prop.get("indexSearchable", is_text) if is_text else False,
            "indexRangeFilters": prop.get("indexRangeFilters", False),
            "tokenization": tokenization,
        })
    if body.get("vectorConfig"):
        config["vectorConfig"] = {}
        for vname, vconf in body["vectorConfig"].items():
            vectorizer = vconf.get("vectorizer") or {"none": {}}
            if list(vectorizer) != ["none"]:
                raise _unimplemented(f"vectorizer {list(vectorizer)} (self-provided vectors only)")
            config["vectorConfig"][vname] = _vector_index(vconf, {"vectorizer": {"none": {}}})
    else:
        if body.get("vectorizer", "none") != "none":
            raise _unimplemented(f"vectorizer {body['vectorizer']!r} (self-provided vectors only)")
        config.update(_vector_index(body, {"vectorizer": "none"}))
    return config


def _vector_index(source: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    index_type = source.get("vectorIndexType") or "hnsw"
    if index_type not in ("hnsw", "flat"):
        raise _unimplemented(f"vector index {index_type!r}")
    defaults = HNSW_DEFAULTS if index_type == "hnsw" else FLAT_DEFAULTS
    index_config = {**json.loads(json.dumps(defaults)), **(source.get("vectorIndexConfig") or {})}
    if index_config["distance"] not in ("cosine", "dot", "l2-squared"):
        raise _unimplemented(f"distance {index_config['distance']!r}")
    return {**base, "vectorIndexType": index_type, "vectorIndexConfig": index_config}


# --------------------------------------------------------------------------- text


def tokenize(text: str, tokenization: str | None) -> list[str]:
    """Weaviate's tokenizers: ``word`` keeps runs of letters and digits, lower-cased."""
    if tokenization == "field":
        return [text.strip()] if text.strip() else []
    if tokenization == "whitespace":
        return text.split()
    if tokenization == "lowercase":
        return text.lower().split()
    return re.findall(r"[^\W_]+", text.lower())


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# --------------------------------------------------------------------------- vectors


def _floats(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def _distance(metric: str, a: list[float], b: list[float]) -> float:
    if metric == "dot":
        return -sum(x * y for x, y in zip(a, b))
    if metric == "l2-squared":
        return sum((x - y) ** 2 for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 1.0 - (sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0)


def _vectors_message(vectors: Iterable[base_pb2.Vectors], what: str) -> dict[str, list[float]]:
    out = {}
    for vec in vectors:
        if vec.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
            raise _unimplemented(f"multi-vectors in {what}")
        out[vec.name] = _floats(vec.vector_bytes)
    return out


def _query_vector(cls: StoredClass, message: Any, targets: list[str]) -> tuple[str, list[float]] | None:
    """The (vector name, query vector) a NearVector/Hybrid message asks for, whichever of the
    encodings the client picked for the server version (``vectors``, ``vector_bytes``,
    ``vector``, ``vector_for_targets``, ``vector_per_target``)."""
    found: dict[str, list[float]] = {}
    if getattr(message, "vectors", None):
        found.update(_vectors_message(message.vectors, "queries"))
    if getattr(message, "vector_bytes", b""):
        found[""] = _floats(message.vector_bytes)
    if len(getattr(message, "vector", [])):
        found[""] = list(message.vector)
    for entry in getattr(message, "vector_for_targets", []):
        vecs = _vectors_message(entry.vectors, "queries") if entry.vectors else {}
        found[entry.name] = next(iter(vecs.values())) if vecs else _floats(entry.vector_bytes)
    for entry in getattr(message, "vector_per_target", []):
        found[entry.key] = _floats(entry.value)
    if not found:
        return None
    names = cls.vector_names()
    if len(set(targets)) > 1 or len(found) > 1:
        raise _unimplemented("multi-target vector search")
    key, vector = next(iter(found.items()))
    name = (targets[0] if targets else None) or key or (names[0] if len(names) == 1 else None)
    if name is None:
        raise StandinError("multiple named vectors configured: the search must name a target vector")
    if "vectorConfig" in cls.config and name not in cls.config["vectorConfig"]:
        raise StandinError(f"target vector \"{name}\" does not exist in collection {cls.name}")
    return name, vector


def _targets(message: Any) -> list[str]:
    if message.HasField("targets") and message.targets.target_vectors:
        return list(message.targets.target_vectors)
    return list(message.target_vectors)


# --------------------------------------------------------------------------- the server


class WeaviateStandin:
    """REST on one loopback port, gRPC on another; in-memory, thread-safe."""

    def __init__(self, version: str = DEFAULT_VERSION, api_key: str | None = None,
                 query_maximum_results: int = 10000):
        self.version = version
        self.api_key = api_key
        self.query_maximum_results = query_maximum_results
        self.classes: dict[str, StoredClass] = {}
        self.lock = threading.RLock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.failure: tuple[int, grpc.StatusCode, str | None] | None = None
        self.delay = 0.0
        self._http = None
        self._grpc = None
        self._http_thread: threading.Thread | None = None
        self.http_port = 0
        self.grpc_port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "WeaviateStandin":
        self._http = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                 request_handler=_QuietHandler)
        self.http_port = self._http.server_port
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="weaviate-standin-http",
                                             daemon=True)
        self._http_thread.start()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_SIZE)])
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self._grpc)
        health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._health_check,
                request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString),
        })
        self._grpc.add_generic_rpc_handlers((health,))
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)

    def __enter__(self) -> "WeaviateStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # ------------------------------------------------------------------ failure injection

    def fail(self, http_status: int = 503, grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
             retry_after: str | None = None) -> None:
        """Answer every request from now on with this error (REST status / gRPC code)."""
        self.failure = (http_status, grpc_code, retry_after)

    def recover(self) -> None:
        self.failure = None
        self.delay = 0.0

    def reset(self) -> None:
        """Forget every class and object (between tests sharing one server)."""
        with self.lock:
            self.classes.clear()
        self.recover()

    # ------------------------------------------------------------------ shared lookups

    def _class(self, name: str) -> StoredClass:
        key = name[:1].upper() + name[1:]
        cls = self.classes.get(key)
        if cls is None:
            raise StandinError(f"class {key!r} not found in schema", 404, grpc.StatusCode.UNKNOWN)
        return cls

    def _shard(self, cls: StoredClass, tenant: str) -> Shard:
        if cls.multi_tenant:
            if not tenant:
                raise StandinError(f"class {cls.name} has multi-tenancy enabled, but request was without tenant")
            shard = cls.shards.get(tenant)
            if shard is None:
                raise StandinError(f"tenant not found: \"{tenant}\"", 422, grpc.StatusCode.UNKNOWN)
            return shard
        if tenant:
            raise StandinError(f"class {cls.name} has multi-tenancy disabled, but request was with tenant")
        return cls.shards[""]

    def _health_check(self, request, context):
        self._gate("gRPC grpc.health.v1.Health/Check", context)
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING)

    def _gate(self, call: str, context=None, headers: dict[str, str] | None = None) -> None:
        """Count the call, apply delay, failure and auth. Raises StandinError for REST;
        aborts the RPC for gRPC."""
        self.calls[call] += 1
        if self.delay:
            time.sleep(self.delay)
        if context is not None:
            headers = {k.lower(): v for k, v in context.invocation_metadata()}
        if self.failure is not None:
            status, code, retry_after = self.failure
            if context is not None:
                context.abort(code, "the stand-in was told to fail")
            raise StandinError("the stand-in was told to fail", status, code)
        public = call.startswith("gRPC grpc.health") or "/.well-known/" in call  # no auth, as in Weaviate
        if self.api_key is not None and not public and \
                (headers or {}).get("authorization") != f"Bearer {self.api_key}":
            if context is not None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "anonymous access not enabled, please provide an auth scheme such as OIDC")
            raise StandinError("anonymous access not enabled", 401, grpc.StatusCode.UNAUTHENTICATED)

    # ------------------------------------------------------------------ REST

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        try:
            response = self._rest(request)
        except StandinError as error:
            headers = {}
            if error.status in (429, 503) and self.failure and self.failure[2]:
                headers["Retry-After"] = self.failure[2]
            response = Response(json.dumps({"error": [{"message": error.message}]}), error.status,
                                headers, content_type="application/json")
        return response(environ, start_response)

    ROUTES: list[tuple[str, str, str]] = [
        ("GET", r"/v1/meta", "meta"),
        ("GET", r"/v1/\.well-known/ready", "ready"),
        ("GET", r"/v1/\.well-known/live", "ready"),
        ("GET", r"/v1/\.well-known/openid-configuration", "openid"),
        ("GET", r"/v1/schema", "schema_list"),
        ("POST", r"/v1/schema", "schema_create"),
        ("GET", r"/v1/schema/(?P<cls>[^/]+)", "schema_get"),
        ("DELETE", r"/v1/schema/(?P<cls>[^/]+)", "schema_delete"),
        ("GET", r"/v1/schema/(?P<cls>[^/]+)/tenants", "tenants_list"),
        ("POST", r"/v1/schema/(?P<cls>[^/]+)/tenants", "tenants_create"),
        ("DELETE", r"/v1/schema/(?P<cls>[^/]+)/tenants", "tenants_delete"),
        ("GET", r"/v1/schema/(?P<cls>[^/]+)/tenants/(?P<tenant>[^/]+)", "tenant_get"),
        ("HEAD", r"/v1/schema/(?P<cls>[^/]+)/tenants/(?P<tenant>[^/]+)", "tenant_get"),
        ("GET", r"/v1/objects/(?P<cls>[^/]+)/(?P<id>[^/]+)", "object_get"),
        ("HEAD", r"/v1/objects/(?P<cls>[^/]+)/(?P<id>[^/]+)", "object_get"),
        ("DELETE", r"/v1/objects/(?P<cls>[^/]+)/(?P<id>[^/]+)", "object_delete"),
    ]

    def _rest(self, request: Request) -> Response:
        for method, pattern, handler in self.ROUTES:
            match = re.fullmatch(pattern, request.path)
            if match and request.method == method:
                label = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).replace("\\", "")
                self._gate(f"{method} {label}", headers={k.lower(): v for k, v in request.headers.items()})
                body = request.get_json(silent=True) if request.data else None
                with self.lock:
                    result = getattr(self, "_rest_" + handler)(body=body, args=request.args, **match.groupdict())
                if isinstance(result, Response):
                    return result
                return Response(json.dumps(result), 200, content_type="application/json")
        self.calls[f"{request.method} {request.path} (unknown)"] += 1
        raise StandinError(f"the Weaviate stand-in does not serve {request.method} {request.path}", 501)

    def _rest_meta(self, **_):
        return {"hostname": "http://[::]:8080", "modules": {}, "version": self.version,
                "grpcMaxMessageSize": GRPC_MAX_MESSAGE_SIZE}

    def _rest_ready(self, **_):
        return Response(status=200)

    def _rest_openid(self, **_):
        return Response(status=404)

    def _rest_schema_list(self, **_):
        return {"classes": [c.config for c in self.classes.values()]}

    def _rest_schema_create(self, body, **_):
        config = complete_class(body)
        if config["class"] in self.classes:
            raise StandinError(f"class name \"{config['class']}\" already exists")
        self.classes[config["class"]] = StoredClass(config, {} if config["multiTenancyConfig"]["enabled"]
                                                    else {"": Shard()})
        return config

    def _rest_schema_get(self, cls, **_):
        try:
            return self._class(cls).config
        except StandinError:
            return Response(status=404)

    def _rest_schema_delete(self, cls, **_):
        self.classes.pop(cls[:1].upper() + cls[1:], None)
        return Response(status=200)

    def _mt_class(self, name: str) -> StoredClass:
        cls = self._class(name)
        if not cls.multi_tenant:
            raise StandinError(f"multi-tenancy is not enabled for class \"{cls.name}\"")
        return cls

    def _rest_tenants_list(self, cls, **_):
        return [{"name": name, "activityStatus": "ACTIVE"} for name in self._mt_class(cls).shards]

    def _rest_tenants_create(self, cls, body, **_):
        stored = self._mt_class(cls)
        names = [t.get("name") if isinstance(t, dict) else None for t in body or []]
        for name in names:
            if not isinstance(name, str) or not TENANT_NAME.match(name):
                raise StandinError(f"tenant name {name!r} is not valid")
            if name in stored.shards:
                raise StandinError(f"tenant \"{name}\" already exists")
        for name in names:
            stored.shards[name] = Shard()
        return [{"name": name, "activityStatus": "ACTIVE"} for name in names]

    def _rest_tenants_delete(self, cls, body, **_):
        stored = self._mt_class(cls)
        for name in body or []:  # like Weaviate, unknown names are ignored
            stored.shards.pop(name, None)
        return Response(status=200)

    def _rest_tenant_get(self, cls, tenant, **_):
        if tenant not in self._mt_class(cls).shards:
            return Response(status=404)
        return {"name": tenant, "activityStatus": "ACTIVE"}

    def _rest_object_get(self, cls, id, args, **_):
        stored = self._class(cls)
        obj = self._shard(stored, args.get("tenant", "")).objects.get(id)
        if obj is None:
            return Response(status=404)
        return {"class": stored.name, "id": obj.uuid, "properties": obj.properties,
                "tenant": args.get("tenant") or None, "vectors": obj.vectors,
                "creationTimeUnix": obj.created_ms, "lastUpdateTimeUnix": obj.updated_ms}

    def _rest_object_delete(self, cls, id, args, **_):
        shard = self._shard(self._class(cls), args.get("tenant", ""))
        return Response(status=204 if shard.objects.pop(id, None) else 404)

    # ------------------------------------------------------------------ objects in

    def put_objects(self, request: batch_pb2.BatchObjectsRequest) -> list[tuple[int, str]]:
        errors = []
        now = int(time.time() * 1000)
        for index, message in enumerate(request.objects):
            try:
                cls = self._class(message.collection)
                shard = self._shard(cls, message.tenant)
                uid = str(uuid_lib.UUID(message.uuid))
                properties = self._properties_in(cls, message.properties)
                vectors = self._vectors_in(cls, message)
                for name, vector in vectors.items():
                    if not vector:
                        raise StandinError(f"vector \"{name}\" is empty")
                    known = shard.dimensions.get(name)
                    if known is not None and known != len(vector):
                        raise StandinError(f"new node has a vector with length {len(vector)}. "
                                           f"Existing nodes have vectors with length {known}")
                for name, vector in vectors.items():
                    shard.dimensions.setdefault(name, len(vector))
                previous = shard.objects.get(uid)
                shard.objects[uid] = StoredObject(uid, properties, vectors,
                                                  previous.created_ms if previous else now, now)
            except (StandinError, ValueError) as error:
                errors.append((index, getattr(error, "message", str(error))))
        return errors

    def _properties_in(self, cls: StoredClass, message: batch_pb2.BatchObject.Properties) -> dict[str, Any]:
        raw: dict[str, Any] = json_format.MessageToDict(message.non_ref_properties) \
            if message.HasField("non_ref_properties") else {}
        for arrays in (message.text_array_properties, message.int_array_properties,
                       message.boolean_array_properties):
            for entry in arrays:
                raw[entry.prop_name] = list(entry.values)
        for entry in message.number_array_properties:
            raw[entry.prop_name] = list(entry.values) if entry.values else \
                list(struct.unpack(f"<{len(entry.values_bytes) // 8}d", entry.values_bytes))
        for name in message.empty_list_props:
            raw[name] = []
        if message.object_properties or message.object_array_properties or message.single_target_ref_props \
                or message.multi_target_ref_props:
            raise _unimplemented("object and reference properties")
        out = {}
        for name, value in raw.items():
            prop = cls.prop(name)
            if prop is None:
                raise StandinError(f"no such prop with name '{name}' found in class '{cls.name}' in the schema. "
                                   "Check your schema files for which properties in this class are available")
            if value is None:
                continue
            out[name] = _coerce(prop, value)
        return out

    def _vectors_in(self, cls: StoredClass, message: batch_pb2.BatchObject) -> dict[str, list[float]]:
        named = _vectors_message(message.vectors, "objects")
        unnamed = _floats(message.vector_bytes) if message.vector_bytes else list(message.vector)
        if "vectorConfig" in cls.config:
            if unnamed:
                raise StandinError(f"collection {cls.name} is configured with named vectors: "
                                   "send vectors by name")
            for name in named:
                if name not in cls.config["vectorConfig"]:
                    raise StandinError(f"collection {cls.name} does not have named vector \"{name}\"")
            return named
        if named:
            raise StandinError(f"collection {cls.name} does not have named vectors")
        return {"default": unnamed} if unnamed else {}

    # ------------------------------------------------------------------ filters

    def matches(self, cls: StoredClass, obj: StoredObject, where: base_pb2.Filters) -> bool:
        op = where.operator
        Op = base_pb2.Filters
        if op == Op.OPERATOR_AND:
            return all(self.matches(cls, obj, f) for f in where.filters)
        if op == Op.OPERATOR_OR:
            return any(self.matches(cls, obj, f) for f in where.filters)
        if op == Op.OPERATOR_NOT:
            return not self.matches(cls, obj, where.filters[0])
        if where.HasField("target"):
            if where.target.WhichOneof("target") != "property":
                raise _unimplemented("filters on references")
            name = where.target.property
        elif len(where.on) == 1:
            name = where.on[0]
        else:
            raise _unimplemented("filters on references")
        kind = where.WhichOneof("test_value")
        wanted = getattr(where, kind) if kind else None
        if kind and kind.endswith("_array"):
            wanted = list(wanted.values)
        if name == "_id":
            value, tokenization, data_type = obj.uuid, "field", "uuid"
        else:
            prop = cls.prop(name)
            if prop is None:
                raise StandinError(f"no such prop with name '{name}' found in class '{cls.name}' in the schema")
            if not prop["indexFilterable"] and op != Op.OPERATOR_IS_NULL:
                raise StandinError(f"Filtering by property '{name}' requires inverted index. Is `indexFilterable` "
                                   f"option of property '{name}' enabled? Set it to `true` or leave empty")
            value, tokenization, data_type = obj.properties.get(name), prop["tokenization"], prop["dataType"][0]
        if op == Op.OPERATOR_IS_NULL:
            return (value is None) == bool(wanted)
        if value is None:
            return op in (Op.OPERATOR_NOT_EQUAL, Op.OPERATOR_CONTAINS_NONE)
        values = value if isinstance(value, list) else [value]
        if data_type.startswith("text"):
            tokens = {t for v in values for t in tokenize(v, tokenization)}

            def has(text: str) -> bool:
                wanted_tokens = tokenize(str(text), tokenization)
                return bool(wanted_tokens) and set(wanted_tokens) <= tokens
        else:
            def has(candidate: Any) -> bool:
                return any(_same(v, candidate) for v in values)
        if op == Op.OPERATOR_EQUAL:
            return has(wanted)
        if op == Op.OPERATOR_NOT_EQUAL:
            return not has(wanted)
        if op in (Op.OPERATOR_CONTAINS_ANY, Op.OPERATOR_CONTAINS_ALL, Op.OPERATOR_CONTAINS_NONE):
            wanted_list = wanted if isinstance(wanted, list) else [wanted]
            hits = [has(w) for w in wanted_list]
            return any(hits) if op == Op.OPERATOR_CONTAINS_ANY else \
                all(hits) if op == Op.OPERATOR_CONTAINS_ALL else not any(hits)
        if op == Op.OPERATOR_LIKE:
            pattern = str(wanted) if tokenization == "field" else str(wanted).lower()
            candidates = [str(v) for v in values] if tokenization == "field" else \
                [t for v in values for t in tokenize(str(v), tokenization)]
            return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
        compare: dict[int, Callable[[Any, Any], bool]] = {
            Op.OPERATOR_GREATER_THAN: lambda a, b: a > b, Op.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
            Op.OPERATOR_LESS_THAN: lambda a, b: a < b, Op.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
        }
        if op in compare:
            return any(compare[op](v, wanted) for v in values)
        raise _unimplemented(f"filter operator {Op.Operator.Name(op)}")

    def filtered(self, cls: StoredClass, shard: Shard, where: base_pb2.Filters | None) -> list[StoredObject]:
        objects = list(shard.objects.values())
        return objects if where is None else [o for o in objects if self.matches(cls, o, where)]

    # ------------------------------------------------------------------ ranking

    def vector_ranking(self, cls: StoredClass, candidates: list[StoredObject], name: str,
                       query: list[float]) -> list[tuple[StoredObject, float]]:
        """Every candidate with that vector, nearest first: (object, distance)."""
        metric = cls.distance_metric(name)
        ranked = []
        for obj in candidates:
            vector = obj.vectors.get(name)
            if vector is None:
                continue
            if len(vector) != len(query):
                raise StandinError(f"vector search: knn search: distance between entrypoint and query node: "
                                   f"vector lengths don't match: {len(vector)} vs {len(query)}")
            ranked.append((obj, _distance(metric, query, vector)))
        ranked.sort(key=lambda pair: (pair[1], pair[0].uuid))
        return ranked

    def bm25_ranking(self, cls: StoredClass, shard: Shard, candidates: list[StoredObject], query: str,
                     properties: list[str], operator: base_search_pb2.SearchOperatorOptions | None
                     ) -> list[tuple[StoredObject, float]]:
        """BM25 per searched property, summed (what Weaviate's BM25F/WAND computes, up to its
        block-max approximations). Objects matching no query term are left out."""
        stopwords = self._stopwords(cls)
        searched = []  # (prop name, tokenization, boost)
        requested = properties or [p["name"] for p in cls.config["properties"]
                                   if p["dataType"][0] in ("text", "text[]") and p["indexSearchable"]]
        for spec in requested:
            name, _, boost = spec.partition("^")
            prop = cls.prop(name)
            if prop is None:
                raise StandinError(f"no such prop with name '{name}' found in class '{cls.name}' in the schema")
            if not prop["indexSearchable"] or prop["dataType"][0] not in ("text", "text[]"):
                raise StandinError(f"property '{name}' is not indexed for keyword search (indexSearchable)")
            searched.append((name, prop["tokenization"], float(boost) if boost else 1.0))
        all_objects = list(shard.objects.values())
        total = len(all_objects)
        scores: dict[str, float] = collections.defaultdict(float)
        matched_terms: dict[str, set[str]] = collections.defaultdict(set)
        query_terms: set[str] = set()
        for name, tokenization, boost in searched:
            terms = collections.Counter(t for t in tokenize(query, tokenization)
                                        if tokenization != "word" or t not in stopwords)
            query_terms |= set(terms)
            docs = {o.uuid: collections.Counter(t for text in _texts(o.properties.get(name))
                                                for t in tokenize(text, tokenization)) for o in all_objects}
            lengths = {uid: sum(c.values()) for uid, c in docs.items()}
            average = (sum(lengths.values()) / len(lengths)) if lengths else 0.0
            for term, repeats in terms.items():
                containing = sum(1 for c in docs.values() if term in c)
                if not containing:
                    continue
                idf = math.log(1 + (total - containing + 0.5) / (containing + 0.5))
                for obj in candidates:
                    tf = docs[obj.uuid].get(term, 0)
                    if not tf:
                        continue
                    norm = 1 - B + B * (lengths[obj.uuid] / average if average else 0)
                    scores[obj.uuid] += boost * repeats * idf * tf * (K1 + 1) / (tf + K1 * norm)
                    matched_terms[obj.uuid].add(term)
        needed = 1
        if operator is not None and operator.operator == base_search_pb2.SearchOperatorOptions.OPERATOR_AND:
            needed = len(query_terms)
        elif operator is not None and operator.HasField("minimum_or_tokens_match"):
            needed = max(1, operator.minimum_or_tokens_match)
        by_id = {o.uuid: o for o in candidates}
        ranked = [(by_id[uid], score) for uid, score in scores.items() if len(matched_terms[uid]) >= needed]
        ranked.sort(key=lambda pair: (-pair[1], pair[0].uuid))
        return ranked

    def _stopwords(self, cls: StoredClass) -> set[str]:
        config = cls.config["invertedIndexConfig"]["stopwords"]
        words = set(EN_STOPWORDS) if config.get("preset", "en") == "en" else set()
        words |= set(config.get("additions") or [])
        words -= set(config.get("removals") or [])
        return words

    def hybrid_ranking(self, cls: StoredClass, shard: Shard, candidates: list[StoredObject],
                       hybrid: base_search_pb2.Hybrid, limit: int) -> list[tuple[StoredObject, float, str]]:
        alpha = hybrid.alpha_param if hybrid.use_alpha_param and hybrid.HasField("alpha_param") else hybrid.alpha
        if hybrid.near_text.ByteSize():
            raise _unimplemented("hybrid with near_text (no vectorizers)")
        found = _query_vector(cls, hybrid.near_vector, _targets(hybrid)) if hybrid.HasField("near_vector") \
            else _query_vector(cls, hybrid, _targets(hybrid))
        pool = max(limit, 100)  # how many each side contributes to the fusion
        sets: list[tuple[str, float, list[tuple[StoredObject, float]]]] = []
        if alpha < 1:
            operator = hybrid.bm25_search_operator if hybrid.HasField("bm25_search_operator") else None
            keyword = self.bm25_ranking(cls, shard, candidates, hybrid.query, list(hybrid.properties), operator)
            sets.append(("keyword,bm25", 1 - alpha, keyword[:pool]))
        if alpha > 0:
            if found is None:
                raise StandinError(f"hybrid search needs a vector: collection {cls.name} has no vectorizer")
            name, query = found
            vector = self.vector_ranking(cls, candidates, name, query)
            if hybrid.HasField("vector_distance"):
                vector = [(o, d) for o, d in vector if d <= hybrid.vector_distance]
            # as scores, higher is better
            sets.append(("vector,hybridVector", alpha, [(o, -d) for o, d in vector[:pool]]))
        fused: dict[str, float] = collections.defaultdict(float)
        explain: dict[str, list[str]] = collections.defaultdict(list)
        objects: dict[str, StoredObject] = {}
        ranked_fusion = hybrid.fusion_type == base_search_pb2.Hybrid.FUSION_TYPE_RANKED
        for set_name, weight, results in sets:
            if not results:
                continue
            high, low = results[0][1], results[-1][1]
            for rank, (obj, score) in enumerate(results):
                if ranked_fusion:
                    part = weight / (rank + 60)
                else:
                    part = weight * ((score - low) / (high - low) if high != low else 1.0)
                fused[obj.uuid] += part
                objects[obj.uuid] = obj
                explain[obj.uuid].append(f"(Result Set {set_name}) Document {obj.uuid}: original score {score:.6g}, "
                                         f"normalized score: {part:.6g}")
        ranked = sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
        return [(objects[uid], score, " - ".join(explain[uid])) for uid, score in ranked]

    # ------------------------------------------------------------------ objects out

    def result(self, cls: StoredClass, obj: StoredObject, request: search_get_pb2.SearchRequest,
               distance: float | None = None, score: float | None = None,
               explain: str | None = None) -> search_get_pb2.SearchResult:
        wanted_meta = request.metadata
        meta = search_get_pb2.MetadataResult(id=obj.uuid, id_as_bytes=uuid_lib.UUID(obj.uuid).bytes)
        if distance is not None and wanted_meta.distance:
            meta.distance, meta.distance_present = distance, True
        if distance is not None and wanted_meta.certainty and cls.distance_metric(
                next(iter(obj.vectors), "default")) == "cosine":
            meta.certainty, meta.certainty_present = 1 - distance / 2, True
        if score is not None and wanted_meta.score:
            meta.score, meta.score_present = score, True
        if explain is not None and wanted_meta.explain_score:
            meta.explain_score, meta.explain_score_present = explain, True
        if wanted_meta.creation_time_unix:
            meta.creation_time_unix, meta.creation_time_unix_present = obj.created_ms, True
        if wanted_meta.last_update_time_unix:
            meta.last_update_time_unix, meta.last_update_time_unix_present = obj.updated_ms, True
        names = list(wanted_meta.vectors) or (list(obj.vectors) if wanted_meta.vector else [])
        for name in names:
            if name in obj.vectors:
                meta.vectors.append(base_pb2.Vectors(
                    name=name, vector_bytes=struct.pack(f"<{len(obj.vectors[name])}f", *obj.vectors[name]),
                    type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32))
        props = search_get_pb2.PropertiesResult(target_collection=cls.name)
        if request.HasField("properties"):
            if request.properties.ref_properties or request.properties.object_properties:
                raise _unimplemented("reference and object properties")
            wanted = list(obj.properties) if request.properties.return_all_nonref_properties \
                else list(request.properties.non_ref_properties)
            for name in wanted:
                if name in obj.properties:
                    props.non_ref_props.fields[name].CopyFrom(_value_out(cls.prop(name), obj.properties[name]))
        return search_get_pb2.SearchResult(properties=props, metadata=meta)

    def search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        started = time.perf_counter()
        for unsupported in ("group_by", "generative", "rerank", "boost", "near_object", "near_text", "near_image",
                            "near_audio", "near_video", "near_depth", "near_thermal", "near_imu"):
            if request.HasField(unsupported):
                raise _unimplemented(f"search with {unsupported}")
        if request.sort_by or request.autocut:
            raise _unimplemented("sort_by and autocut")
        cls = self._class(request.collection)
        shard = self._shard(cls, request.tenant)
        limit = request.limit or 10
        if limit + request.offset > self.query_maximum_results:
            raise StandinError(f"query maximum results exceeded: limit {limit} + offset {request.offset} > "
                               f"{self.query_maximum_results}")
        where = request.filters if request.HasField("filters") else None
        candidates = self.filtered(cls, shard, where)
        window = slice(request.offset, request.offset + limit)
        if request.HasField("near_vector"):
            found = _query_vector(cls, request.near_vector, _targets(request.near_vector))
            if found is None:
                raise StandinError("near_vector without a vector")
            ranked = self.vector_ranking(cls, candidates, *found)
            near = request.near_vector
            if near.HasField("distance"):
                ranked = [(o, d) for o, d in ranked if d <= near.distance]
            if near.HasField("certainty"):
                ranked = [(o, d) for o, d in ranked if 1 - d / 2 >= near.certainty]
            results = [self.result(cls, o, request, distance=d) for o, d in ranked[window]]
        elif request.HasField("bm25_search"):
            bm25 = request.bm25_search
            operator = bm25.search_operator if bm25.HasField("search_operator") else None
            ranked = self.bm25_ranking(cls, shard, candidates, bm25.query, list(bm25.properties), operator)
            results = [self.result(cls, o, request, score=s) for o, s in ranked[window]]
        elif request.HasField("hybrid_search"):
            ranked3 = self.hybrid_ranking(cls, shard, candidates, request.hybrid_search, limit + request.offset)
            results = [self.result(cls, o, request, score=s, explain=e) for o, s, e in ranked3[window]]
        else:
            listed = sorted(candidates, key=lambda o: o.uuid)
            if request.after:
                listed = [o for o in listed if o.uuid > request.after]
            results = [self.result(cls, o, request) for o in listed[window]]
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return stored is wanted or stored == wanted
    return stored == wanted


def _coerce(prop: dict[str, Any], value: Any) -> Any:
    data_type = prop["dataType"][0]
    base = data_type.rstrip("[]")
    if data_type.endswith("[]"):
        if not isinstance(value, list):
            raise StandinError(f"invalid {data_type} property '{prop['name']}': not a list")
        return [_coerce({**prop, "dataType": [base]}, v) for v in value]
    if base in ("text", "date", "uuid", "blob"):
        if not isinstance(value, str):
            raise StandinError(f"invalid {base} property '{prop['name']}' on class: not a string, but {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise StandinError(f"invalid integer property '{prop['name']}': requires an integer, got {value!r}")
        return int(value)
    if base == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StandinError(f"invalid number property '{prop['name']}': got {value!r}")
        return float(value)
    if base == "boolean":
        if not isinstance(value, bool):
            raise StandinError(f"invalid boolean property '{prop['name']}': got {value!r}")
        return value
    raise _unimplemented(f"data type {data_type}")


def _value_out(prop: dict[str, Any], value: Any) -> properties_pb2.Value:
    data_type = prop["dataType"][0]
    if data_type.endswith("[]"):
        base = data_type[:-2]
        if base == "int":
            listed = properties_pb2.ListValue(int_values=properties_pb2.IntValues(
                values=struct.pack(f"<{len(value)}q", *value)))
        elif base == "number":
            listed = properties_pb2.ListValue(number_values=properties_pb2.NumberValues(
                values=struct.pack(f"<{len(value)}d", *value)))
        elif base == "boolean":
            listed = properties_pb2.ListValue(bool_values=properties_pb2.BoolValues(values=value))
        elif base == "date":
            listed = properties_pb2.ListValue(date_values=properties_pb2.DateValues(values=value))
        elif base == "uuid":
            listed = properties_pb2.ListValue(uuid_values=properties_pb2.UuidValues(values=value))
        else:
            listed = properties_pb2.ListValue(text_values=properties_pb2.TextValues(values=value))
        return properties_pb2.Value(list_value=listed)
    if data_type == "int":
        return properties_pb2.Value(int_value=value)
    if data_type == "number":
        return properties_pb2.Value(number_value=value)
    if data_type == "boolean":
        return properties_pb2.Value(bool_value=value)
    if data_type == "date":
        return properties_pb2.Value(date_value=value)
    if data_type == "uuid":
        return properties_pb2.Value(uuid_value=value)
    if data_type == "blob":
        return properties_pb2.Value(blob_value=value)
    return properties_pb2.Value(text_value=value)


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    """gRPC side: each RPC gates (counts, fails on demand), then runs under the store lock."""

    def __init__(self, standin: WeaviateStandin):
        self.standin = standin

    def _run(self, name: str, context, work: Callable[[], Any]) -> Any:
        self.standin._gate(f"gRPC weaviate.v1.Weaviate/{name}", context)
        try:
            with self.standin.lock:
                return work()
        except StandinError as error:
            context.abort(error.code, error.message)

    def Search(self, request, context):
        return self._run("Search", context, lambda: self.standin.search(request))

    def BatchObjects(self, request, context):
        def work():
            started = time.perf_counter()
            errors = self.standin.put_objects(request)
            return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=[
                batch_pb2.BatchObjectsReply.BatchError(index=i, error=message) for i, message in errors])
        return self._run("BatchObjects", context, work)

    def BatchDelete(self, request, context):
        def work():
            started = time.perf_counter()
            standin = self.standin
            cls = standin._class(request.collection)
            shard = standin._shard(cls, request.tenant if request.HasField("tenant") else "")
            if not request.HasField("filters"):
                raise StandinError("batch delete needs filters")
            matched = standin.filtered(cls, shard, request.filters)[:standin.query_maximum_results]
            if not request.dry_run:
                for obj in matched:
                    del shard.objects[obj.uuid]
            return batch_delete_pb2.BatchDeleteReply(
                took=time.perf_counter() - started, failed=0, matches=len(matched),
                successful=0 if request.dry_run else len(matched),
                objects=[batch_delete_pb2.BatchDeleteObject(uuid=uuid_lib.UUID(o.uuid).bytes,
                                                            successful=not request.dry_run)
                         for o in matched] if request.verbose else [])
        return self._run("BatchDelete", context, work)

    def Aggregate(self, request, context):
        def work():
            started = time.perf_counter()
            if request.aggregations or request.HasField("group_by") or request.WhichOneof("search"):
                raise _unimplemented("aggregations other than objects_count")
            standin = self.standin
            cls = standin._class(request.collection)
            shard = standin._shard(cls, request.tenant)
            objects = standin.filtered(cls, shard, request.filters if request.HasField("filters") else None)
            single = aggregate_pb2.AggregateReply.Single()
            if request.objects_count:
                single.objects_count = len(objects)
            return aggregate_pb2.AggregateReply(took=time.perf_counter() - started, single_result=single)
        return self._run("Aggregate", context, work)

    def TenantsGet(self, request, context):
        def work():
            cls = self.standin._class(request.collection)
            names = list(request.names.values) if request.HasField("names") else list(cls.shards)
            return tenants_pb2.TenantsGetReply(tenants=[
                tenants_pb2.Tenant(name=n, activity_status=tenants_pb2.TENANT_ACTIVITY_STATUS_HOT)
                for n in names if n in cls.shards])
        return self._run("TenantsGet", context, work)

    def BatchReferences(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the Weaviate stand-in does not implement references")

    def BatchStream(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the Weaviate stand-in does not implement batch streaming")
