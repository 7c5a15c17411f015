"""``pinecone``: Spacio's vectors in a Pinecone index, through the official SDK (REST).

Why this shape:

- **One index, one Pinecone namespace per space.** Namespaces are free, isolated within
  the index (a query reads one namespace only, so a small space is never searched through a
  large one) and dropped in one call. The index is created on first use (serverless,
  ``cloud``/``region``, cosine, the embedder's dimension) unless ``host`` names one.
- **Record ids name their document**: ``<document id>#<chunk id>`` (each part
  percent-encoded, so neither holds a ``#``). Listing the ids with the prefix
  ``<document id>#`` finds a document's chunks on a serverless index, which cannot always
  delete or count by metadata filter; the chunk id (``Hit.id``) is the part after ``#``.
  The same chunk id gives the same record id, so an upsert replaces it.
- **Metadata** holds what a hit needs: ``document_id`` (the filter), ``ordinal``, ``page``,
  ``text``, and the record's own metadata as one JSON string (Pinecone takes strings,
  numbers, booleans and lists of strings only, and no nulls). Pinecone allows 40 KB of
  metadata per record: a longer text is cut to fit, at a character boundary, and the
  record is marked ``text_truncated`` (a warning is logged).
- **No keyword search** (``keyword_search = False``): Pinecone's dense indexes have none;
  the host answers hybrid and keyword searches from the vectors.
- **Our retries, not the SDK's.** The SDK retries 429/5xx and timeouts itself (three
  times, sleeping through a ``Retry-After`` of up to a minute each time, with a retry
  budget shared by the whole process); its data-plane client cannot be configured. The
  store turns them off and retries ``max_retries`` times with its own backoff, then raises
  ``UpstreamUnavailable`` with the server's ``retry_after``, so a search a person waits for
  is bounded by ``timeout`` and ``max_retries``.
- **gevent-friendly** (``cpu_bound = False``): the SDK's REST client is httpx on Python
  sockets, which gevent's monkey-patching makes cooperative, and it starts no threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import quote, unquote

import orjson
from marshmallow import Schema, ValidationError, fields, post_load, validate
from pinecone import (
    ApiError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PaymentRequiredError,
    Pinecone,
    PineconeConnectionError,
    PineconeError,
    PineconeTimeoutError,
    RateLimitError,
    ResponseParsingError,
    RetryConfig,
    UnauthorizedError,
)

from spacio.rag.contracts import Hit, InvalidInput, PluginError, UpstreamUnavailable, VectorRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

API_KEY_ENV = "PINECONE_API_KEY"
DENSE_FIELD = "_values"  # the schema field name the vectors API serves (a "dimension/metric" index)
METRICS = ("cosine", "dotproduct")  # equal on the unit vectors the host sends
INDEX_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")  # 1-45 lowercase letters, digits, '-'
NAMESPACE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,256}$")  # used as is; anything else is hashed
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
# what the SDK takes as a host: an optional http(s) scheme, a name with a dot (or localhost), no spaces
HOST = re.compile(r"(?:https?://)?(?:[^\s/:]*\.[^\s/:]*|localhost|[^\s/:]*\.localhost)(?::\d+)?(?:/\S*)?", re.I)

MAX_METADATA_BYTES = 40 * 1024  # Pinecone's limit per record
METADATA_BUDGET = MAX_METADATA_BYTES - 256  # what a record fills at most: the service may count a little differently
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # Pinecone's limit per request
REQUEST_BUDGET = MAX_REQUEST_BYTES - 64 * 1024  # room for the envelope and our estimate's slack
MAX_UPSERT = 1000  # vectors per upsert request
MAX_DELETE_IDS = 1000  # ids per delete request
MAX_TOP_K = 1000  # results per query when metadata is included
LIST_PAGE = 100  # ids per list page (the API's maximum)
FLOAT_CHARS = 25  # a float64 in JSON, with its comma, at most ("-1.2345678901234567e-123,")
CREATE_WAIT = 300  # seconds a new index may take to become ready
MAX_SLEEP = 10.0  # the longest wait before a retry; a longer Retry-After goes to the host
NO_SDK_RETRIES = RetryConfig(max_retries=0)
DIMENSION_MISMATCH = re.compile(r"dimension\s+(\d+)\s+does not match the dimension of the index\s+(\d+)", re.I)


class PineconeOptions(Schema):
    """``api_key`` falls back to ``PINECONE_API_KEY``; a missing key is a configuration error."""

    api_key = fields.String(load_default=None, metadata={"description": "default: PINECONE_API_KEY"})
    index = fields.String(load_default="spacio", validate=validate.Regexp(
        INDEX_NAME, error="must be a Pinecone index name: 1-45 lowercase letters, digits or '-'"))
    host = fields.String(load_default=None, metadata={
        "description": "the index's data-plane host (https://<index>-<project>.svc.<region>.pinecone.io); "
                       "given, the control plane is never called and the index must exist"})
    controller_host = fields.String(load_default=None, metadata={
        "description": "the control plane; default PINECONE_CONTROLLER_HOST, then https://api.pinecone.io"})
    cloud = fields.String(load_default="aws", validate=validate.OneOf(["aws", "gcp", "azure"]))
    region = fields.String(load_default="us-east-1", validate=validate.Length(min=1))
    timeout = fields.Float(load_default=15.0, validate=validate.Range(min=0, min_inclusive=False),
                           metadata={"description": "seconds per HTTP attempt"})
    max_retries = fields.Integer(load_default=3, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=0.5, validate=validate.Range(min=0),
                           metadata={"description": "seconds before the first retry, doubling"})
    batch_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_UPSERT),
                                metadata={"description": "vectors per upsert request at most (and 2 MB)"})

    @post_load
    def _api_key_from_environment(self, data: dict, **kwargs: Any) -> dict:
        # keys pasted from files often end with a newline, which no HTTP header may carry
        data["api_key"] = (data.get("api_key") or os.environ.get(API_KEY_ENV) or "").strip() or None
        if not data["api_key"]:
            raise ValidationError(f"a Pinecone API key is required: set the plugin option api_key "
                                  f"(SPACIO_PLUGINS__VECTOR_STORE__PINECONE__API_KEY) or {API_KEY_ENV}", "api_key")
        if not PRINTABLE_ASCII.fullmatch(data["api_key"]):
            raise ValidationError("the Pinecone API key must be printable ASCII without spaces "
                                  "(it goes into an HTTP header)", "api_key")
        for option in ("host", "controller_host"):
            value = (data.get(option) or "").strip().rstrip("/")
            if data.get(option) is not None and not HOST.fullmatch(value):
                raise ValidationError("must be a host name or an http(s) URL (https://name.example.com)", option)
            data[option] = value or None
        return data


class PineconeVectorStore:
    """A ``VectorStore`` in one Pinecone index. Thread- and greenlet-safe; share one
    instance (it holds one HTTP connection pool per plane)."""

    options_schema = PineconeOptions
    keyword_search = False
    cpu_bound = False

    def __init__(self, **options: Any):
        try:  # validated by the host already; this covers direct construction
            opts = PineconeOptions().load(options)
        except ValidationError as error:
            raise ValueError(f"invalid Pinecone options: {error.messages}") from error
        self._api_key: str = opts["api_key"]
        self.index_name: str = opts["index"]
        self.host: str | None = opts["host"]
        self.controller_host: str | None = opts["controller_host"]
        self.cloud: str = opts["cloud"]
        self.region: str = opts["region"]
        self.timeout: float = opts["timeout"]
        self.max_retries: int = opts["max_retries"]
        self.backoff: float = opts["backoff"]
        self.batch_size: int = opts["batch_size"]
        self._sleep: Callable[[float], None] = time.sleep
        self._lock = threading.RLock()
        self._control: Pinecone | None = None
        self._data: Any = None  # pinecone.Index, once the index is known
        self._dimension: int | None = None
        self._filter_delete: bool | None = None  # None: not tried yet
        self._told_no_keywords = False

    def __repr__(self) -> str:  # never the key
        where = self.host or f"index {self.index_name!r}"
        return f"PineconeVectorStore({where})"

    # ------------------------------------------------------------------ clients

    def _pinecone(self) -> Pinecone:
        """The control-plane client (it also builds the data-plane one). No I/O."""
        if self._control is None:
            with self._lock:
                if self._control is None:
                    self._control = Pinecone(api_key=self._api_key, host=self.controller_host,
                                             timeout=self.timeout, retry_config=NO_SDK_RETRIES,
                                             source_tag="spacio")
        return self._control

    def _open(self, host: str) -> Any:
        data = self._pinecone().index(host=host)
        _turn_off_sdk_retries(data)
        return data

    def _index(self, *, create_with: int | None = None) -> Any:
        """The data-plane client of the index, found (and, given ``create_with``
        dimensions, created) once. ``None`` when the index does not exist and nothing
        should create it: nothing is stored then."""
        if self._data is not None:
            return self._data
        with self._lock:
            if self._data is not None:
                return self._data
            if self.host:
                data = self._open(self.host)
                stats = self._retrying("describe index stats", data.describe_index_stats)
                self._accept(stats.dimension, stats.metric or "cosine")
            else:
                model = self._describe()
                if model is None:
                    if create_with is None:
                        return None
                    model = self._create(create_with)
                if not model.status.ready:
                    raise UpstreamUnavailable(f"The Pinecone index {self.index_name!r} is not ready yet "
                                              f"(state {model.status.state}).", retry_after=10.0)
                dense = model.schema.fields.get(DENSE_FIELD)
                if getattr(dense, "dimension", None) is None:
                    raise PluginError(
                        f"The Pinecone index {self.index_name!r} is not a vector index (created with a dimension "
                        f"and metric; its fields are {sorted(model.schema.fields)}): choose another index name "
                        "(option index).", reason="index_incompatible")
                self._accept(dense.dimension, dense.metric)
                if not model.host:
                    raise UpstreamUnavailable(f"The Pinecone index {self.index_name!r} has no host yet.",
                                              retry_after=10.0)
                data = self._open(model.host)
            self._data = data
            return data

    def _accept(self, dimension: int | None, metric: str) -> None:
        if metric not in METRICS:
            raise PluginError(f"The Pinecone index {self.host or self.index_name!r} uses the {metric} metric; "
                              f"Spacio needs {' or '.join(METRICS)}: choose another index.",
                              reason="index_incompatible")
        self._dimension = dimension

    def _describe(self) -> Any:
        try:
            return self._retrying("describe index", lambda: self._pinecone().indexes.describe(self.index_name),
                                  translate_404=False)
        except NotFoundError:
            return None

    def _create(self, dimensions: int) -> Any:
        log.info("creating the Pinecone index %r (%d dimensions, cosine, %s %s)", self.index_name, dimensions,
                 self.cloud, self.region)
        schema = {"fields": {DENSE_FIELD: {"type": "dense_vector", "dimension": int(dimensions), "metric": "cosine"}}}
        deployment = {"deployment_type": "managed", "cloud": self.cloud, "region": self.region}
        try:
            return self._retrying("create index", lambda: self._pinecone().indexes.create(
                name=self.index_name, schema=schema, deployment=deployment, timeout=CREATE_WAIT),
                translate_409=False)
        except ConflictError:  # created meanwhile by another process (or by our retried request)
            pass
        model = self._describe()
        if model is None:  # created and deleted again meanwhile: try later
            raise UpstreamUnavailable(f"The Pinecone index {self.index_name!r} vanished while it was created.")
        return model

    # ------------------------------------------------------------------ calls

    def _retrying(self, what: str, fn: Callable[[], T], *, translate_404: bool = True,
                  translate_409: bool = True) -> T:
        """``fn()``, retried on what is worth retrying (429, 5xx, timeouts, connections) with
        exponential backoff or the server's ``Retry-After``; then the contract's error.
        Every call made this way is idempotent (upserts replace by id)."""
        attempt = 0
        while True:
            try:
                return fn()
            except PineconeError as exc:
                if (isinstance(exc, NotFoundError) and not translate_404) or \
                        (isinstance(exc, ConflictError) and not translate_409):
                    raise
                cause, error = exc, _translate(what, exc)
            if not isinstance(error, UpstreamUnavailable) or attempt >= self.max_retries:
                raise error from cause
            if error.retry_after is None:
                delay = min(self.backoff * 2 ** attempt * random.uniform(0.75, 1.25), MAX_SLEEP)
            elif error.retry_after <= MAX_SLEEP:
                delay = error.retry_after
            else:  # the host's queue waits better than a held request
                raise error from cause
            attempt += 1
            log.info("pinecone %s failed (%s), retry %d/%d in %.2fs", what, error.message, attempt,
                     self.max_retries, delay)
            self._sleep(delay)

    def _quiet_404(self, what: str, fn: Callable[[], T], empty: T) -> T:
        """``fn()``, or ``empty`` when Pinecone says the namespace (or index) is not there."""
        try:
            return self._retrying(what, fn, translate_404=False)
        except NotFoundError:
            return empty

    # ------------------------------------------------------------------ the contract

    def ready(self, timeout: float) -> None:
        """One cheap round trip: the index's stats (or, before the index exists, its
        description). Raises ``UpstreamUnavailable``/``PluginError`` when it cannot serve."""
        data = self._data
        if data is None and not self.host:
            try:
                self._pinecone().indexes.describe(self.index_name)
            except NotFoundError:
                return  # created on first use
            except PineconeError as exc:
                raise _translate("readiness check", exc) from exc
            data = self._index()
        elif data is None:
            data = self._index()
        try:
            data.describe_index_stats(timeout=min(float(timeout), self.timeout))
        except PineconeError as exc:
            raise _translate("readiness check", exc) from exc

    def ensure_namespace(self, namespace: str, dimensions: int) -> None:
        """Find or create the index and check its dimension. A namespace needs no creating:
        Pinecone makes it with its first record."""
        self._index(create_with=int(dimensions))
        self._check_dimensions(int(dimensions))

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        vectors = [_vector(record) for record in records]
        data = self._index()
        if data is None:
            raise PluginError(f"The Pinecone index {self.index_name!r} does not exist: ensure_namespace creates it.",
                              reason="vector_store_rejected")
        for vector in vectors:
            self._check_dimensions(len(vector["values"]))
        target = pinecone_namespace(namespace)
        try:
            for batch in _batches(vectors, self.batch_size, REQUEST_BUDGET):
                self._retrying("upsert", lambda: data.upsert(vectors=batch, namespace=target))
        except PluginError as error:
            if not isinstance(error.__cause__, NotFoundError) or self.host:
                raise
            # an upsert creates its namespace: a 404 means the index was deleted behind our back.
            # Forget it, so that the host's retry (ensure_namespace first) creates it again.
            with self._lock:
                self._data = None
            raise UpstreamUnavailable(f"The Pinecone index {self.index_name!r} is gone; it is created again on "
                                      "the next try.") from error.__cause__

    def search(self, namespace: str, *, vector: Sequence[float] | None = None, text: str | None = None,
               limit: int = 10, document_ids: Sequence[str] | None = None) -> list[Hit]:
        if vector is None and text is None:
            raise InvalidInput("A search needs a vector (this store has no keyword search).", reason="empty_query")
        if vector is None:
            if not self._told_no_keywords:
                self._told_no_keywords = True
                log.warning("the pinecone vector store has no keyword search (keyword_search = False): "
                            "a text-only search finds nothing")
            return []
        values = _floats(vector)
        if limit <= 0 or (document_ids is not None and not document_ids):
            return []
        self._check_dimensions(len(values))
        data = self._index()
        if data is None:
            return []
        where = None
        if document_ids is not None:
            ids = list(dict.fromkeys(str(d) for d in document_ids))
            where = {"document_id": {"$eq": ids[0]}} if len(ids) == 1 else {"document_id": {"$in": ids}}
        result = self._quiet_404("search", lambda: data.query(
            vector=values, top_k=min(int(limit), MAX_TOP_K), namespace=pinecone_namespace(namespace),
            filter=where, include_metadata=True), None)
        return [_hit(match) for match in result.matches] if result is not None else []

    def delete_document(self, namespace: str, document_id: str) -> None:
        data = self._index()
        if data is None:
            return
        target, document_id = pinecone_namespace(namespace), str(document_id)
        if self._filter_delete is not False:
            try:
                self._retrying("delete document", lambda: data.delete(
                    filter={"document_id": {"$eq": document_id}}, namespace=target), translate_404=False)
                self._filter_delete = True
                return
            except NotFoundError:
                return  # no such namespace: nothing to delete
            except PluginError as error:
                if not isinstance(error.__cause__, ApiError) or error.__cause__.status_code != 400 \
                        or self._filter_delete:
                    raise
                # serverless indexes refuse to delete by metadata: list the document's ids instead
                log.info("pinecone: the index does not delete by metadata filter (%s); deleting by id prefix",
                         error.message)
                self._filter_delete = False
        ids = self._ids(data, target, document_id)
        for start in range(0, len(ids), MAX_DELETE_IDS):
            chunk = ids[start:start + MAX_DELETE_IDS]
            self._quiet_404("delete document", lambda: data.delete(ids=chunk, namespace=target), None)

    def drop_namespace(self, namespace: str) -> None:
        data = self._index()
        if data is None:
            return
        target = pinecone_namespace(namespace)
        self._quiet_404("drop namespace", lambda: data.delete_namespace(name=target), None)

    def count(self, namespace: str, document_id: str | None = None) -> int:
        data = self._index()
        if data is None:
            return 0
        target = pinecone_namespace(namespace)
        if document_id is not None:
            return len(self._ids(data, target, str(document_id)))
        stats = self._retrying("count", data.describe_index_stats)
        summary = stats.namespaces.get(target)
        return int(summary.vector_count) if summary is not None else 0

    def close(self) -> None:
        """Close both connection pools. Never raises."""
        with self._lock:
            for client in (self._data, self._control):
                try:
                    if client is not None:
                        client.close()
                except Exception:  # noqa: BLE001 - closing at exit must not fail the worker
                    log.debug("closing a Pinecone client failed", exc_info=True)
            self._data = self._control = None

    # ------------------------------------------------------------------ helpers

    def _check_dimensions(self, dimensions: int) -> None:
        if self._dimension is not None and dimensions != self._dimension:
            raise PluginError(
                f"The Pinecone index {self.host or self.index_name!r} holds {self._dimension}-dimension vectors, "
                f"not {dimensions}: the embedder changed. Reindex into another index (option index) or "
                "select the embedder the index was built with.", reason="pipeline_changed")

    def _ids(self, data: Any, target: str, document_id: str) -> list[str]:
        """The record ids of a document, by listing its id prefix page by page."""
        prefix = f"{_part(document_id)}#"
        ids: list[str] = []
        token = None
        while True:
            page = self._quiet_404("list document ids", lambda: data.list_paginated(
                prefix=prefix, limit=LIST_PAGE, pagination_token=token, namespace=target), None)
            if page is None:
                return ids
            ids.extend(item.id for item in page.vectors if item.id)
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                return ids


# --------------------------------------------------------------------------- records


def pinecone_namespace(namespace: str) -> str:
    """The Pinecone namespace of a space: its name when it is plain (a space id is), else a
    stable digest (Pinecone takes ASCII only, and ``""`` is its default namespace)."""
    if NAMESPACE_NAME.fullmatch(namespace) and namespace != "__default__":
        return namespace
    return "ns-" + hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:48]


def _part(value: str) -> str:
    """An id part without '#' and in ASCII (a UUID stays as it is)."""
    return quote(value, safe="")


def record_id(document_id: str, chunk_id: str) -> str:
    return f"{_part(str(document_id))}#{_part(str(chunk_id))}"


def _floats(vector: Sequence[float]) -> list[float]:
    """Plain Python floats (a numpy row converts with ``tolist()``, 10x faster than float()
    per value); NaN or infinity would poison the index (unit vectors cannot overflow a sum)."""
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


def _vector(record: VectorRecord) -> dict[str, Any]:
    """The wire form of a record: ``{"id", "values", "metadata"}``, metadata within 40 KB."""
    vector_id = record_id(record.document_id, record.id)
    if len(vector_id) > 512:
        raise InvalidInput(f"Record {record.id!r} of document {record.document_id!r}: the Pinecone id would be "
                           f"{len(vector_id)} characters; at most 512 fit.", reason="invalid_record")
    metadata: dict[str, Any] = {"document_id": str(record.document_id), "ordinal": int(record.ordinal)}
    if record.page is not None:
        metadata["page"] = int(record.page)
    if record.metadata:
        try:
            metadata["metadata"] = json.dumps(dict(record.metadata), ensure_ascii=False, allow_nan=False,
                                              separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"Metadata of record {record.id} is not JSON: {error}",
                               reason="invalid_metadata") from error
    text = record.text or ""
    room = METADATA_BUDGET - len(orjson.dumps({**metadata, "text": "", "text_truncated": True}))
    if room < 0:
        raise InvalidInput(f"Metadata of record {record.id} is {len(orjson.dumps(metadata))} bytes; Pinecone "
                           f"takes {MAX_METADATA_BYTES} per record.", reason="metadata_too_large")
    if len(orjson.dumps(text)) - 2 > room:
        kept = _fit(text, room)
        log.warning("chunk %s of document %s: text cut from %d to %d characters to fit Pinecone's 40 KB "
                    "of metadata per record", record.id, record.document_id, len(text), len(kept))
        text = kept
        metadata["text_truncated"] = True
    metadata["text"] = text
    return {"id": vector_id, "values": _floats(record.vector), "metadata": metadata}


def _fit(text: str, room: int) -> str:
    """The longest start of ``text`` whose JSON string takes at most ``room`` bytes."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if len(orjson.dumps(text[:middle])) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _batches(vectors: list[dict[str, Any]], most: int, budget: int) -> list[list[dict[str, Any]]]:
    """Consecutive batches of at most ``most`` vectors and ``budget`` bytes of JSON (an
    upper bound: every value at its longest, the metadata as sent)."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for vector in vectors:
        weight = FLOAT_CHARS * len(vector["values"]) + len(orjson.dumps(vector["metadata"])) + len(vector["id"]) + 64
        if current and (len(current) >= most or size + weight > budget):
            batches.append(current)
            current, size = [], 0
        current.append(vector)
        size += weight
    if current:
        batches.append(current)
    return batches


def _hit(match: Any) -> Hit:
    metadata: Mapping[str, Any] = match.metadata or {}
    vector_id: str = match.id
    chunk_id = unquote(vector_id.split("#", 1)[1]) if "#" in vector_id else vector_id
    raw = metadata.get("metadata")
    try:
        extra = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:  # written by something else than this store
        extra = {"raw": raw}
    page = metadata.get("page")
    return Hit(id=chunk_id, document_id=str(metadata.get("document_id", "")),
               ordinal=int(metadata.get("ordinal", 0)), text=str(metadata.get("text", "")),
               score=float(match.score), page=int(page) if isinstance(page, (int, float)) else None,
               metadata=extra if isinstance(extra, dict) else {})


# --------------------------------------------------------------------------- errors


def _turn_off_sdk_retries(data: Any) -> None:
    """The SDK's data-plane client retries with a fixed policy (see the module docstring)
    that its constructor does not expose; set the policy of its retrying transport, so our
    ``max_retries`` is the only one. Checked by a test against the pinned SDK version."""
    transport = getattr(getattr(getattr(data, "_http", None), "_client", None), "_transport", None)
    if isinstance(getattr(transport, "_config", None), RetryConfig):
        transport._config = NO_SDK_RETRIES
    else:  # a later SDK moved it: its retries then come on top of ours
        log.warning("pinecone: cannot turn off the SDK's own data-plane retries (SDK internals changed)")


def _translate(what: str, exc: PineconeError) -> PluginError:
    """The contract's error for an SDK error: 429, 5xx, timeouts and connection failures
    are ``UpstreamUnavailable`` (the host retries); a refused key is ``upstream_error``;
    a vector of the wrong size ``pipeline_changed``."""
    prefix = f"Pinecone {what} failed"
    if isinstance(exc, PineconeTimeoutError):
        return UpstreamUnavailable(f"{prefix}: timed out ({_short(exc.message)})")
    if isinstance(exc, PineconeConnectionError):
        return UpstreamUnavailable(f"{prefix}: cannot reach Pinecone ({_short(exc.message)})")
    if isinstance(exc, ResponseParsingError):  # a 2xx body of the wrong shape: a proxy, or a service hiccup
        return UpstreamUnavailable(f"{prefix}: unreadable response ({_short(exc.message)})",
                                   reason="upstream_bad_response")
    if not isinstance(exc, ApiError):  # the SDK refused the request before sending it
        return PluginError(f"{prefix}: {_short(str(exc))}", reason="vector_store_rejected")
    status, detail = exc.status_code, _short(exc.message)
    if isinstance(exc, RateLimitError) or status == 408 or status >= 500:
        return UpstreamUnavailable(f"{prefix}: HTTP {status} ({detail})",
                                   retry_after=_retry_after(exc))
    if isinstance(exc, (UnauthorizedError, ForbiddenError)):
        return PluginError(f"{prefix}: Pinecone refused the API key (HTTP {status}: {detail}); check the option "
                           f"api_key or {API_KEY_ENV}", reason="upstream_error")
    if isinstance(exc, PaymentRequiredError):
        return PluginError(f"{prefix}: HTTP 402 ({detail}); check the Pinecone project's plan",
                           reason="upstream_error")
    mismatch = DIMENSION_MISMATCH.search(exc.message or "")
    if mismatch:
        return PluginError(f"{prefix}: the index holds {mismatch.group(2)}-dimension vectors, not "
                           f"{mismatch.group(1)}: the embedder changed. Use another index (option index) or the "
                           "embedder the index was built with.", reason="pipeline_changed")
    if status == 404:
        return PluginError(f"{prefix}: not found (HTTP 404: {detail}); check the options index and host",
                           reason="upstream_error")
    if status in (400, 413, 422):
        return PluginError(f"{prefix}: Pinecone refused the request (HTTP {status}: {detail})",
                           reason="vector_store_rejected")
    return PluginError(f"{prefix}: HTTP {status} ({detail})", reason="upstream_error")


def _retry_after(exc: ApiError) -> float | None:
    value = getattr(exc, "retry_after", None)
    if value is None:
        header = next((v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"), None)
        try:
            value = float(header) if header is not None else None
        except ValueError:
            value = None
    return max(0.0, float(value)) if value is not None and math.isfinite(value) else None


def _short(text: str | None) -> str:
    text = " ".join(str(text or "").split())
    return text[:300] + ("…" if len(text) > 300 else "")
