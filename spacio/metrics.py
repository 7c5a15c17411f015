"""Prometheus metrics at ``/metrics``.

Two sources, one exposition:

- Counted in the web processes (prometheus_client): request latency by method, route
  template and status; tokens spent by requests. Under gunicorn with several workers
  these use prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (set by
  ``gunicorn.conf.py`` when the environment does not) holds one file per worker, and a
  scrape of any worker sums them all.
- Read at scrape time from the database (and Redis): documents by status, ingestion
  durations, failures by reason, queue depth, embedding tokens of ingested documents.
  Ingestion runs in ``dramatiq`` worker processes, on a platform in other containers that
  Prometheus may not reach and whose in-memory counters die with them; the documents
  table is what every worker already writes, so any web worker reports the same numbers.
  These are gauges of the table's current state (a deleted document leaves them).
"""

import hmac
import logging
import os

_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _MULTIPROC_DIR:  # prometheus_client writes there from the first sample on
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)

from prometheus_client import (  # noqa: E402 - after the directory exists
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily  # noqa: E402
from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: E402

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: one timestamp per label set is noise here

HTTP_LATENCY = Histogram(
    "spacio_http_request_duration_seconds",
    "Time to the response's headers (a stream's body is not included), by route template.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS = Counter("spacio_tokens", "Tokens spent by search, query and chat requests (usage records).", ["type"])
# upload -> ready of one document (queue wait included), seconds
INGEST_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DOCUMENT_STATUSES = ("queued", "parsing", "embedding", "ready", "failed")
CONTENT_TYPE = CONTENT_TYPE_LATEST
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(method, route, status, seconds):
    """One request's latency. Labels stay bounded: route templates (``<unmatched>`` for no
    route), the standard methods (anything else is ``other``), status codes."""
    HTTP_LATENCY.labels(method if method in METHODS else "other", route, str(status)).observe(seconds)


def count_tokens(prompt_tokens=0, completion_tokens=0, embedding_tokens=0):
    for kind, value in (("prompt", prompt_tokens), ("completion", completion_tokens),
                        ("embedding", embedding_tokens)):
        if value:
            TOKENS.labels(kind).inc(int(value))


def authorized(config, authorization):
    """Whether a scrape may read the metrics: always when no METRICS_TOKEN is set, else with
    ``Authorization: Bearer <token>`` (compared in constant time)."""
    token = config.get("METRICS_TOKEN")
    if not token:
        return True
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


def exposition(redis_url=None):
    """The text exposition: this process's (or every gunicorn worker's) metrics, then the
    database's."""
    if _MULTIPROC_DIR:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    scraped = CollectorRegistry()
    scraped.register(_Snapshot(_database_families() + _broker_families(redis_url)))
    return generate_latest(registry) + generate_latest(scraped)


class _Snapshot:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def _database_families():
    up = GaugeMetricFamily("spacio_metrics_database_up", "Whether the database answered this scrape.")
    try:
        stats = document_stats(INGEST_BUCKETS)
    except Exception as exc:  # noqa: BLE001 - a scrape reports the rest when the database is down
        log.warning("metrics: the database did not answer (%s)", exc.__class__.__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    documents = GaugeMetricFamily("spacio_documents", "Documents by ingestion status.", labels=["status"])
    for status in sorted(set(DOCUMENT_STATUSES) | set(stats.by_status)):
        documents.add_metric([status], stats.by_status.get(status, 0))
    queue = GaugeMetricFamily("spacio_ingest_queue_depth",
                              "Documents waiting for a worker (status queued), from the database.")
    queue.add_metric([], stats.by_status.get("queued", 0))
    failures = GaugeMetricFamily("spacio_ingest_failures", "Failed documents by error reason.", labels=["reason"])
    for reason, count in sorted(stats.failures.items()):
        failures.add_metric([reason], count)
    durations = HistogramMetricFamily(
        "spacio_ingest_duration_seconds",
        "Upload to ready of the ready documents (queue wait included), from their timestamps.")
    durations.add_metric([], [(_le(b), c) for b, c in stats.buckets] + [("+Inf", stats.ready)],
                         sum_value=stats.duration_sum)
    tokens = GaugeMetricFamily("spacio_ingest_embedding_tokens", "Embedding tokens of the ready documents.")
    tokens.add_metric([], stats.tokens)
    return [up, documents, queue, failures, durations, tokens]


def _broker_families(redis_url):
    if not redis_url:
        return []
    import redis

    from spacio.jobs import INGEST_QUEUE

    family = GaugeMetricFamily("spacio_broker_queue_messages",
                               "Messages in the Redis broker's queue (queue: waiting; delayed: retries).",
                               labels=["queue", "state"])
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        waiting = client.llen(f"dramatiq:{INGEST_QUEUE}")
        delayed = client.llen(f"dramatiq:{INGEST_QUEUE}.DQ")
    except redis.RedisError as exc:
        log.warning("metrics: Redis did not answer (%s)", exc.__class__.__name__)
        return []
    finally:
        client.close()
    family.add_metric([INGEST_QUEUE, "waiting"], waiting)
    family.add_metric([INGEST_QUEUE, "delayed"], delayed)
    return [family]


class DocumentStats:
    def __init__(self):
        self.by_status, self.failures = {}, {}
        self.ready, self.duration_sum, self.tokens, self.buckets = 0, 0.0, 0, []


def document_stats(buckets):
    """One aggregate over the documents table: counts by status and failure reason, and,
    for the ready documents, the histogram of updated_at - created_at and their tokens. A
    reindexed document counts from its first upload."""
    from sqlalchemy import case, func, literal_column, select

    from spacio.documents.models import Document
    from spacio.extensions import db

    if db.engine.dialect.name == "postgresql":
        seconds = func.extract("epoch", Document.updated_at - Document.created_at)
    else:
        seconds = (func.julianday(Document.updated_at) - func.julianday(Document.created_at)) * 86400.0
    ready = Document.status == "ready"
    columns = [Document.status, Document.error_reason, func.count().label("n"),
               func.sum(case((ready, seconds), else_=0.0)), func.sum(case((ready, Document.tokens), else_=0))]
    columns += [func.sum(case((ready & (seconds <= literal_column(repr(float(b)))), 1), else_=0)) for b in buckets]
    stats = DocumentStats()
    counts = [0] * len(buckets)
    try:
        rows = db.session.execute(select(*columns).group_by(Document.status, Document.error_reason)).all()
    finally:
        db.session.rollback()
    for status, reason, n, duration, tokens, *within in rows:
        stats.by_status[status] = stats.by_status.get(status, 0) + int(n)
        if status == "failed":
            stats.failures[reason or "unknown"] = stats.failures.get(reason or "unknown", 0) + int(n)
        if status == "ready":
            stats.ready += int(n)
            stats.duration_sum += float(duration or 0)
            stats.tokens += int(tokens or 0)
            counts = [c + int(w or 0) for c, w in zip(counts, within)]
    stats.buckets = list(zip(buckets, counts))
    return stats


def _le(bound):
    return str(float(bound))
