"""A local stand-in for Pinecone's REST API (version 2026-07), so the real ``pinecone`` SDK
can be tested without a network: the control plane (``/indexes``) and the data plane of
every index it creates, with exact cosine search in numpy.

Control plane, at :attr:`PineconeStandin.url` (the SDK's ``Pinecone(host=...)``):

- ``POST /indexes`` (``schema.fields._values`` a ``dense_vector``: an index the vectors
  API serves), ``GET /indexes``, ``GET /indexes/{name}``, ``DELETE /indexes/{name}``. An
  index's ``host`` points back at this server, under ``/data/{name}``: the SDK sends its
  data-plane requests there.

Data plane, under ``/data/{name}``: ``POST /vectors/upsert``, ``POST /query``,
``POST /vectors/delete`` (ids, ``deleteAll`` or a metadata ``filter``), ``GET /vectors/list``
(by id prefix, paginated), ``GET /vectors/fetch``, ``POST /describe_index_stats``,
``GET``/``DELETE /namespaces/{namespace}``.

It checks what the service checks and answers in its shapes (the SDK's msgspec models
``IndexModel``, ``QueryResponse``, ``ListResponse``, ``DescribeIndexStatsResponse``... parse
them): the ``Api-Key`` header, at most 1000 vectors and 2 MB per upsert, the index's
dimension, 40 KB of metadata per record whose values are strings, numbers, booleans or
lists of strings, ``topK`` at most 1000 with metadata, IDs ASCII and at most 512
characters. Like a serverless index it refuses to delete by metadata filter unless
:attr:`filter_delete` is set, and a namespace that holds nothing does not exist (404 on
list, delete and describe; a query of it finds nothing).

Errors use the service's bodies: ``{"error": {"code", "message"}, "status"}`` on the
control plane, ``{"code", "message", "details"}`` (gRPC codes) on the data plane. Faults on
demand: :meth:`fail` (a status, with ``Retry-After``, or a non-JSON body from a broken
proxy), :meth:`stall` (an answer that takes too long). Every request is recorded with its
headers, for tests to assert on.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API_KEY = "standin-key"
API_VERSION = "2026-07"
MAX_UPSERT_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_METADATA_BYTES = 40 * 1024
MAX_TOP_K = 10_000
MAX_TOP_K_WITH_DATA = 1000
MAX_DELETE_IDS = 1000
MAX_LIST_LIMIT = 100
MAX_DIMENSION = 20_000
INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")
CLOUDS = {"aws", "gcp", "azure"}
METRICS = {"cosine", "dotproduct", "euclidean"}
DEFAULT_NAMESPACE = "__default__"

# data-plane error codes (gRPC status numbers, as the service reports them)
INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL = 3, 5, 16, 8, 14, 13
_CONTROL_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                  409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "UNKNOWN", 503: "UNAVAILABLE"}
_DATA_CODES = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 404: NOT_FOUND, 413: INVALID_ARGUMENT,
               429: RESOURCE_EXHAUSTED, 500: INTERNAL, 503: UNAVAILABLE}


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class Recorded:
    method: str
    path: str  # without the /data/{index} prefix; ``index`` says which
    headers: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    index: str | None = None
    status: int = 200


@dataclass
class Failure:
    status: int
    retry_after: str | None
    message: str | None
    path: str | None
    raw_body: str | None


class StandinError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class StoredIndex:
    name: str
    dimension: int
    metric: str
    cloud: str
    region: str
    #: namespace -> id -> (values as float64, metadata or None)
    namespaces: dict[str, dict[str, tuple[np.ndarray, dict | None]]] = field(default_factory=dict)


@dataclass
class PineconeStandin:
    """Start with :meth:`start` (or use as a context manager); point the SDK at :attr:`url`."""

    api_key: str = API_KEY
    #: whether ``/vectors/delete`` takes a metadata ``filter`` (pod indexes do; serverless
    #: ones answered 400 for a long time)
    filter_delete: bool = False
    #: an index answers ``status.ready: false`` to its first this many descriptions
    not_ready_for: int = 0
    requests: list[Recorded] = field(default_factory=list)
    indexes: dict[str, StoredIndex] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._failures: deque[Failure] = deque()
        self._stalls: deque[float] = deque()
        self._lock = threading.RLock()
        self._generation = 0
        self._describes: dict[str, int] = {}
        self._server = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "PineconeStandin":
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="pinecone-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "PineconeStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def host_of(self, index: str) -> str:
        """The data-plane host the control plane reports for ``index``."""
        return f"{self.url}/data/{quote(index, safe='')}"

    # ------------------------------------------------------------------ test controls

    def fail(self, status: int, times: int = 1, *, retry_after: float | str | None = None,
             message: str | None = None, path: str | None = None, raw_body: str | None = None) -> None:
        """Answer the next ``times`` requests (to ``path``, e.g. ``/query``, if given) with
        ``status``: the service's error body with ``message``, or ``raw_body`` as text/html."""
        with self._lock:
            for _ in range(times):
                self._failures.append(Failure(status, None if retry_after is None else str(retry_after),
                                              message, path, raw_body))

    def stall(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests wait ``seconds`` before they are answered."""
        with self._lock:
            self._stalls.extend([seconds] * times)

    def reset(self) -> None:
        """Forget queued faults and recorded requests (the stored data stays)."""
        with self._lock:
            self._generation += 1
            self._failures.clear()
            self._stalls.clear()
            self.requests.clear()
        self.filter_delete = False
        self.not_ready_for = 0

    def calls(self, path: str, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path and method in (None, r.method)]

    def create_index(self, name: str, dimension: int, metric: str = "cosine") -> None:
        """An index made by someone else (as if through the console)."""
        with self._lock:
            self.indexes[name] = StoredIndex(name, dimension, metric, "aws", "us-east-1")

    def records(self, index: str, namespace: str) -> dict[str, tuple[list[float], dict | None]]:
        with self._lock:
            stored = self.indexes[index].namespaces.get(namespace, {})
            return {i: (v.tolist(), None if m is None else dict(m)) for i, (v, m) in stored.items()}

    # ------------------------------------------------------------------ WSGI

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        raw = request.get_data()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path, index = request.path, None
        match = re.fullmatch(r"/data/([^/]+)(/.*)", path)
        if match:
            index, path = match.group(1), match.group(2)
        record = Recorded(request.method, path, {k.lower(): v for k, v in request.headers.items()},
                          request.args.to_dict(flat=False), body, index)
        with self._lock:
            self.requests.append(record)
            stall = self._stalls.popleft() if self._stalls else 0.0
            generation = self._generation
        if stall:
            time.sleep(stall)
            if generation != self._generation:  # its test is over: touch nothing of the next one
                return Response("", status=503)(environ, start_response)
        data_plane = index is not None
        try:
            if len(raw) > MAX_REQUEST_BYTES:
                raise StandinError(413 if not data_plane else 400,
                                   f"Request size {len(raw) / 1024 / 1024:.1f}MB exceeds the maximum supported "
                                   f"size of 2MB")
            response = self._dispatch(request, path, index, body, record)
            record.status = response.status_code
        except StandinError as error:
            record.status = error.status
            if data_plane:
                payload = {"code": _DATA_CODES.get(error.status, INTERNAL), "message": error.message, "details": []}
            else:
                payload = {"error": {"code": _CONTROL_CODES.get(error.status, "UNKNOWN"), "message": error.message},
                           "status": error.status}
            response = Response(json.dumps(payload), status=error.status, headers=error.headers,
                                content_type="application/json")
        return response(environ, start_response)

    def _dispatch(self, request: Request, path: str, index: str | None, body: Any, record: Recorded) -> Response:
        if request.headers.get("Api-Key") != self.api_key:
            raise StandinError(401, "Invalid API Key")
        failure = self._next_failure(path)
        if failure is not None:
            record.status = failure.status
            if failure.raw_body is not None:
                return Response(failure.raw_body, status=failure.status, content_type="text/html")
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            raise StandinError(failure.status, failure.message or _default_message(failure.status), headers)
        method = request.method
        if index is None:
            return self._control(method, path, body)
        with self._lock:
            stored = self.indexes.get(index)
        if stored is None:  # the real host of a deleted index stops resolving; a 404 is close enough
            raise StandinError(404, f"Index {index} not found")
        if method in ("POST", "PUT", "PATCH") and not isinstance(body, dict):
            raise StandinError(400, "Invalid request body: expected a JSON object")
        routes = {("POST", "/vectors/upsert"): self._upsert, ("POST", "/query"): self._query,
                  ("POST", "/vectors/delete"): self._delete, ("GET", "/vectors/list"): self._list,
                  ("GET", "/vectors/fetch"): self._fetch, ("POST", "/describe_index_stats"): self._stats}
        handler = routes.get((method, path))
        if handler is not None:
            return handler(stored, body if isinstance(body, dict) else {}, request)
        match = re.fullmatch(r"/namespaces/([^/]+)", path)
        if match and method in ("GET", "DELETE"):
            return self._namespace(stored, method, match.group(1))
        raise StandinError(404, f"Not found: {method} {path}")

    def _next_failure(self, path: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.path in (None, path):
                    self._failures.remove(failure)
                    return failure
        return None

    # ------------------------------------------------------------------ control plane

    def _control(self, method: str, path: str, body: Any) -> Response:
        if path == "/indexes" and method == "GET":
            with self._lock:
                return _json({"indexes": [self._model(i) for i in self.indexes.values()]})
        if path == "/indexes" and method == "POST":
            return self._create(body)
        match = re.fullmatch(r"/indexes/([^/]+)", path)
        if match is None:
            raise StandinError(404, f"Not found: {method} {path}")
        name = match.group(1)
        with self._lock:
            stored = self.indexes.get(name)
            if stored is None:
                raise StandinError(404, f"Resource {name} not found")
            if method == "GET":
                self._describes[name] = self._describes.get(name, 0) + 1
                return _json(self._model(stored))
            if method == "DELETE":
                del self.indexes[name]
                return Response("", status=202)
        raise StandinError(405, "Method not allowed")

    def _create(self, body: Any) -> Response:
        if not isinstance(body, dict):
            raise StandinError(400, "Invalid request body: expected a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not INDEX_NAME.fullmatch(name):
            raise StandinError(400, "Name must consist of lowercase alphanumeric characters or '-', "
                                    "and be 1-45 characters long")
        fields = ((body.get("schema") or {}).get("fields")) or {}
        dense = fields.get("_values")
        if set(fields) != {"_values"} or not isinstance(dense, dict) or dense.get("type") != "dense_vector":
            raise StandinError(400, "The stand-in serves vector indexes only: schema.fields must be exactly "
                                    "{'_values': {'type': 'dense_vector', ...}}")
        dimension, metric = dense.get("dimension"), dense.get("metric", "cosine")
        if not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
            raise StandinError(400, f"Dimension must be between 1 and {MAX_DIMENSION}")
        if metric not in METRICS:
            raise StandinError(400, f"Invalid metric {metric!r}")
        deployment = body.get("deployment") or {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"}
        if deployment.get("deployment_type") != "managed" or deployment.get("cloud") not in CLOUDS \
                or not deployment.get("region"):
            raise StandinError(400, "Invalid deployment: expected deployment_type 'managed' with a cloud "
                                    f"({', '.join(sorted(CLOUDS))}) and a region")
        with self._lock:
            if name in self.indexes:
                raise StandinError(409, "Resource already exists")
            stored = StoredIndex(name, dimension, metric, deployment["cloud"], deployment["region"])
            self.indexes[name] = stored
            self._describes[name] = 0
            return _json(self._model(stored), status=201)

    def _model(self, stored: StoredIndex) -> dict:
        ready = self._describes.get(stored.name, 0) > self.not_ready_for
        return {
            "name": stored.name,
            "status": {"ready": ready, "state": "Ready" if ready else "Initializing"},
            "schema": {"fields": {"_values": {"type": "dense_vector", "dimension": stored.dimension,
                                              "metric": stored.metric}}},
            "deployment": {"deployment_type": "managed", "cloud": stored.cloud, "region": stored.region},
            "deletion_protection": "disabled",
            "host": self.host_of(stored.name),
            "read_capacity": {"mode": "OnDemand", "status": {"state": "Ready"}},
            "tags": None,
        }

    # ------------------------------------------------------------------ data plane

    def _upsert(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise StandinError(400, "Invalid request: vectors must be a non-empty list")
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise StandinError(400, f"Request contains {len(vectors)} vectors; the maximum is {MAX_UPSERT_VECTORS}")
        namespace = _namespace(body)
        parsed = []
        for vector in vectors:
            vector_id = vector.get("id")
            _check_id(vector_id)
            values = vector.get("values")
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in values):
                raise StandinError(400, f"Vector {vector_id}: values must be a list of numbers")
            if len(values) != stored.dimension:
                raise StandinError(400, f"Vector dimension {len(values)} does not match the dimension of the "
                                        f"index {stored.dimension}")
            metadata = vector.get("metadata")
            if metadata is not None:
                _check_metadata(vector_id, metadata)
            parsed.append((vector_id, np.asarray(values, dtype=np.float64), metadata))
        with self._lock:
            space = stored.namespaces.setdefault(namespace, {})
            for vector_id, values, metadata in parsed:
                space[vector_id] = (values, metadata)
        return _json({"upsertedCount": len(parsed)})

    def _query(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        top_k = body.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise StandinError(400, f"Invalid request: topK must be between 1 and {MAX_TOP_K}")
        include_metadata, include_values = bool(body.get("includeMetadata")), bool(body.get("includeValues"))
        if (include_metadata or include_values) and top_k > MAX_TOP_K_WITH_DATA:
            raise StandinError(400, f"Invalid request: topK must be at most {MAX_TOP_K_WITH_DATA} when "
                                    "including metadata or values")
        vector = body.get("vector")
        if not isinstance(vector, list) or not vector:
            raise StandinError(400, "Invalid request: the stand-in queries by vector only")
        if len(vector) != stored.dimension:
            raise StandinError(400, f"Vector dimension {len(vector)} does not match the dimension of the index "
                                    f"{stored.dimension}")
        condition = body.get("filter")
        namespace = _namespace(body)
        with self._lock:
            items = list(stored.namespaces.get(namespace, {}).items())
        if condition is not None:
            _check_filter(condition)
            items = [item for item in items if _matches(item[1][1] or {}, condition)]
        matches = []
        if items:
            query = np.asarray(vector, dtype=np.float64)
            matrix = np.stack([values for _, (values, _) in items])
            if stored.metric == "cosine":
                norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
                scores = matrix @ query / np.where(norms == 0, 1.0, norms)
            elif stored.metric == "dotproduct":
                scores = matrix @ query
            else:  # euclidean: Pinecone reports the squared distance, smaller first
                scores = -np.sum((matrix - query) ** 2, axis=1)
            order = np.lexsort((np.arange(len(items)), -scores))[:top_k]
            for position in order:
                vector_id, (values, metadata) = items[position]
                score = float(scores[position]) if stored.metric != "euclidean" else float(-scores[position])
                match: dict[str, Any] = {"id": vector_id, "score": score, "values": []}
                if include_values:
                    match["values"] = values.tolist()
                if include_metadata and metadata is not None:
                    match["metadata"] = metadata
                matches.append(match)
        return _json({"results": [], "matches": matches, "namespace": body.get("namespace", ""),
                      "usage": {"readUnits": max(1, len(items) // 1000)}})

    def _delete(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        namespace = _namespace(body)
        ids, delete_all, condition = body.get("ids"), bool(body.get("deleteAll")), body.get("filter")
        if sum(x is not None and x is not False for x in (ids, delete_all or None, condition)) != 1:
            raise StandinError(400, "Invalid request: exactly one of ids, deleteAll and filter is required")
        if condition is not None:
            if not self.filter_delete:
                raise StandinError(400, "Serverless and Starter indexes do not support deleting with metadata "
                                        "filtering")
            if not condition:
                raise StandinError(400, "Delete with empty metadata filter is not allowed")
            _check_filter(condition)
        if ids is not None:
            if not isinstance(ids, list) or len(ids) > MAX_DELETE_IDS:
                raise StandinError(400, f"Invalid request: ids must be a list of at most {MAX_DELETE_IDS}")
            for vector_id in ids:
                _check_id(vector_id)
        with self._lock:
            space = stored.namespaces.get(namespace)
            if not space:
                raise StandinError(404, "Namespace not found")
            if delete_all:
                del stored.namespaces[namespace]
            else:
                doomed = [i for i in ids] if ids is not None else \
                    [i for i, (_, metadata) in space.items() if _matches(metadata or {}, condition)]
                for vector_id in doomed:
                    space.pop(vector_id, None)
                if not space:
                    del stored.namespaces[namespace]
        return _json({})

    def _list(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        args = request.args
        namespace = args.get("namespace") or DEFAULT_NAMESPACE
        prefix = args.get("prefix", "")
        try:
            limit = int(args.get("limit", MAX_LIST_LIMIT))
        except ValueError:
            raise StandinError(400, "Invalid limit") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise StandinError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}")
        token = args.get("paginationToken")
        with self._lock:
            space = stored.namespaces.get(namespace)
            if not space:
                raise StandinError(404, "Namespace not found")
            ids = sorted(i for i in space if i.startswith(prefix))
        start = 0
        if token:
            try:
                start = int(token, 16)
            except ValueError:
                raise StandinError(400, "Invalid pagination token") from None
        page = ids[start:start + limit]
        payload: dict[str, Any] = {"vectors": [{"id": i} for i in page], "namespace": args.get("namespace", ""),
                                   "usage": {"readUnits": 1}}
        if start + limit < len(ids):
            payload["pagination"] = {"next": format(start + limit, "x")}
        return _json(payload)

    def _fetch(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        namespace = request.args.get("namespace") or DEFAULT_NAMESPACE
        ids = request.args.getlist("ids")
        if not ids:
            raise StandinError(400, "Invalid request: ids is required")
        with self._lock:
            space = stored.namespaces.get(namespace)
            if space is None:
                raise StandinError(404, "Namespace not found")
            found = {i: space[i] for i in ids if i in space}
        vectors = {i: {"id": i, "values": v.tolist(), **({"metadata": m} if m is not None else {})}
                   for i, (v, m) in found.items()}
        return _json({"vectors": vectors, "namespace": request.args.get("namespace", ""),
                      "usage": {"readUnits": 1}})

    def _stats(self, stored: StoredIndex, body: dict, request: Request) -> Response:
        if body.get("filter") is not None:
            raise StandinError(400, "Serverless and Starter indexes do not support describing index stats "
                                    "with metadata filtering")
        with self._lock:
            counts = {name: len(space) for name, space in stored.namespaces.items() if space}
        return _json({"namespaces": {name: {"vectorCount": n} for name, n in counts.items()},
                      "dimension": stored.dimension, "indexFullness": 0.0, "totalVectorCount": sum(counts.values()),
                      "metric": stored.metric, "vectorType": "dense"})

    def _namespace(self, stored: StoredIndex, method: str, namespace: str) -> Response:
        with self._lock:
            space = stored.namespaces.get(namespace)
            if not space:
                raise StandinError(404, "Namespace not found")
            if method == "DELETE":
                del stored.namespaces[namespace]
                return Response("", status=202)
            return _json({"name": namespace, "record_count": len(space)})


# --------------------------------------------------------------------------- helpers


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


def _namespace(body: dict) -> str:
    namespace = body.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(namespace, str) or not namespace.isascii() or "\x00" in namespace or len(namespace) > 512:
        raise StandinError(400, "Invalid namespace")
    return namespace


def _check_id(vector_id: Any) -> None:
    if not isinstance(vector_id, str) or not vector_id or len(vector_id) > 512 or not vector_id.isascii() \
            or "\x00" in vector_id:
        raise StandinError(400, f"Invalid vector id {str(vector_id)[:80]!r}: IDs are 1-512 ASCII characters")


def _check_metadata(vector_id: str, metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise StandinError(400, f"Metadata of vector {vector_id} must be an object")
    for key, value in metadata.items():
        ok = isinstance(value, (str, int, float)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            rendered = json.dumps(value, ensure_ascii=False)[:16]
            raise StandinError(400, f"Metadata value must be a string, number, boolean or list of strings, "
                                    f"got '{rendered}' for field '{key}'")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise StandinError(400, f"Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA_BYTES} "
                                "bytes per vector")


_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}


def _check_filter(condition: Any) -> None:
    if not isinstance(condition, dict):
        raise StandinError(400, "Invalid filter: expected an object")
    for key, value in condition.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise StandinError(400, f"Invalid filter: {key} takes a non-empty list")
            for part in value:
                _check_filter(part)
        elif key.startswith("$"):
            raise StandinError(400, f"Invalid filter operator {key}")
        elif isinstance(value, dict):
            for operator, operand in value.items():
                if operator not in _OPERATORS:
                    raise StandinError(400, f"Invalid filter operator {operator}")
                if operator in ("$in", "$nin") and (not isinstance(operand, list) or len(operand) > 10_000):
                    raise StandinError(400, f"Invalid filter: {operator} takes a list of at most 10000 values")


def _matches(metadata: dict, condition: dict) -> bool:
    for key, value in condition.items():
        if key == "$and":
            if not all(_matches(metadata, part) for part in value):
                return False
        elif key == "$or":
            if not any(_matches(metadata, part) for part in value):
                return False
        elif isinstance(value, dict):
            if not all(_compare(metadata, key, operator, operand) for operator, operand in value.items()):
                return False
        elif not _compare(metadata, key, "$eq", value):
            return False
    return True


def _compare(metadata: dict, key: str, operator: str, operand: Any) -> bool:
    present = key in metadata
    if operator == "$exists":
        return present == bool(operand)
    value = metadata.get(key)
    values = value if isinstance(value, list) else [value]  # a list matches when one element does
    if operator == "$eq":
        return present and operand in values
    if operator == "$ne":
        return not present or operand not in values
    if operator == "$in":
        return present and any(v in operand for v in values)
    if operator == "$nin":
        return not present or not any(v in operand for v in values)
    if not present or not isinstance(value, (int, float)):
        return False
    return {"$gt": value > operand, "$gte": value >= operand, "$lt": value < operand,
            "$lte": value <= operand}[operator]


def _default_message(status: int) -> str:
    return {429: "Too many requests. Please retry shortly.", 500: "Internal server error",
            502: "Bad gateway", 503: "Service unavailable", 401: "Invalid API Key"}.get(status, f"Error {status}")
