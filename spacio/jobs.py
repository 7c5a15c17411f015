"""Background jobs on Dramatiq.

- Production (``SPACIO_REDIS_URL`` set): a RedisBroker; ``dramatiq tasks`` worker
  processes run the actors (``tasks/__init__.py``). Web processes only enqueue.
- Embedded default (no Redis): a StubBroker and an in-process worker, started with the
  app (``start_inprocess_worker``). Its queue lives in memory, so at start it re-enqueues
  the documents a previous process left unfinished. Single node only.

Actors take ids only, are idempotent, and are enqueued after the commit. Each app
declares them on its own broker, so tests can build apps with different brokers.
"""

import logging
import threading

import dramatiq
import dramatiq.errors
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Middleware
from flask import current_app

from spacio import logs
from spacio.heap import ReleaseFreedHeap

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The broker refused messages; ``unsent`` holds the document ids that are not queued."""

    def __init__(self, unsent):
        super().__init__(f"{len(unsent)} documents could not be queued")
        self.unsent = unsent

INGEST_QUEUE = "ingest"
INGEST_ACTOR = "ingest_document"
BUILD_ACTOR = "build_document"  # a document of a space's reindex (spacio.rag.reindexing)


def init_app(app):
    """Make the app's broker and declare the actors on it. Connects to nothing yet."""
    cfg = app.config
    if cfg["REDIS_URL"]:
        broker = RedisBroker(url=cfg["REDIS_URL"], heartbeat_timeout=int(cfg["BROKER_HEARTBEAT_TIMEOUT_MS"]),
                             maintenance_chance=int(cfg["BROKER_MAINTENANCE_CHANCE"]))
    else:
        broker = StubBroker()
    broker.add_middleware(CurrentMessage())
    # first: its before_ hooks run first and its after_ hooks last (Dramatiq runs those in
    # reverse), so the other middleware's lines (Retries' "retrying") carry the id too
    broker.add_middleware(RequestIdMiddleware(), before=type(broker.middleware[0]))
    broker.add_middleware(ReleaseFreedHeap())  # what a document used goes back to the OS (spacio.heap)
    options = {
        "max_retries": int(cfg["INGEST_MAX_RETRIES"]),
        "min_backoff": int(cfg["INGEST_MIN_BACKOFF_MS"]),
        "max_backoff": int(cfg["INGEST_MAX_BACKOFF_MS"]),
        "time_limit": int(cfg["INGEST_TIME_LIMIT_MS"]),
    }
    ingest = dramatiq.Actor(_ingest_in(app), broker=broker, actor_name=INGEST_ACTOR, queue_name=INGEST_QUEUE,
                            priority=0, options=options)
    # the same queue: a reindex's documents wait behind uploads, which people are watching
    build = dramatiq.Actor(_build_in(app), broker=broker, actor_name=BUILD_ACTOR, queue_name=INGEST_QUEUE,
                           priority=10, options=options)
    app.extensions["spacio.jobs"] = Jobs(app, broker, ingest, build)


class RequestIdMiddleware(Middleware):
    """Carries the request id into the messages a request enqueues (message option
    ``request_id``; retries keep their options), and sets it for the log lines of the
    worker thread while it processes the message (``spacio.logs``)."""

    def before_enqueue(self, broker, message, delay):
        request_id = logs.current_request_id()
        if request_id and "request_id" not in message.options:
            message.options["request_id"] = request_id

    def before_process_message(self, broker, message):
        logs.set_job_request_id(message.options.get("request_id"))

    def after_process_message(self, broker, message, *, result=None, exception=None):
        logs.set_job_request_id(None)

    def after_skip_message(self, broker, message):
        logs.set_job_request_id(None)


def _ingest_in(app):
    def ingest_document(document_id):
        """Parse, chunk, embed and index one document (idempotent)."""
        from spacio.rag import pipeline

        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message is not None else 0
        last_try = retries >= int(app.config["INGEST_MAX_RETRIES"])
        with app.app_context():
            try:
                pipeline.ingest(document_id, last_try=last_try)
            except pipeline.RetryLater as exc:
                # the pipeline logged why, once (a crash with its traceback): Dramatiq would log
                # any other exception again with its traceback, a Retry only as "retrying"
                raise dramatiq.Retry(str(exc)) from exc

    ingest_document.__name__ = INGEST_ACTOR
    return ingest_document


def _build_in(app):
    def build_document(build_id, document_id):
        """Index one document of a space's reindex into its new namespace (idempotent)."""
        from spacio.rag import pipeline, reindexing

        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message is not None else 0
        with app.app_context():
            try:
                reindexing.build(build_id, document_id,
                                 last_try=retries >= int(app.config["INGEST_MAX_RETRIES"]))
            except pipeline.RetryLater as exc:
                raise dramatiq.Retry(str(exc)) from exc

    build_document.__name__ = BUILD_ACTOR
    return build_document


class Jobs:
    def __init__(self, app, broker, ingest, build):
        self.app = app
        self.broker = broker
        self.ingest = ingest
        self.build = build
        self.worker = None
        self._lock = threading.Lock()

    @property
    def inprocess(self):
        return isinstance(self.broker, StubBroker)

    def enqueue_ingest(self, document_ids):
        """Queue documents for ingestion; call after their rows are committed. In the
        embedded default the in-process worker starts on first use if the server did not
        start it. Raises ``QueueUnavailable`` with the ids the broker refused (Redis down)."""
        sent = self.start_inprocess_worker() if self.inprocess else set()
        self._send(self.ingest, [(i, (str(i),)) for i in document_ids if i not in sent])

    def enqueue_build(self, build_id, document_ids):
        """Queue documents of a reindex (``build_id``); call after its rows are committed."""
        sent = self.start_inprocess_worker() if self.inprocess else set()
        self._send(self.build, [(i, (str(build_id), str(i))) for i in document_ids if (build_id, i) not in sent])

    def _send(self, actor, messages):
        """Send ``(document_id, args)`` messages; ``QueueUnavailable`` with the ids refused."""
        unsent = []
        for document_id, args in messages:
            if not unsent:  # once the broker has refused one, do not wait on it for each
                try:
                    actor.send(*args)
                    continue
                except (redis.RedisError, dramatiq.errors.BrokerConnectionError) as exc:
                    log.warning("the ingestion queue refused a message: %s", exc.__class__.__name__)
            unsent.append(document_id)
        if unsent:
            raise QueueUnavailable(unsent)

    def start_inprocess_worker(self):
        """Start the embedded default's worker threads (once) and re-enqueue the documents
        a previous process left unfinished; returns their ids. Parsing and embedding run on
        real threads (spacio.concurrency), never on the gevent hub."""
        with self._lock:
            if self.worker is not None or not self.inprocess:
                return set()
            self.worker = dramatiq.Worker(self.broker, queues={INGEST_QUEUE}, worker_timeout=100,
                                          worker_threads=int(self.app.config["INGEST_INPROCESS_THREADS"]))
            self.worker.start()
            with self.app.app_context():
                from spacio.documents import services
                from spacio.rag import reindexing

                pending = services.unfinished_ids()
                building = [tuple(item) for item in reindexing.queued_items()]
            for document_id in pending:
                self.ingest.send(str(document_id))
            for build_id, document_id in building:
                self.build.send(str(build_id), str(document_id))
            if pending or building:
                log.info("re-enqueued %d unfinished documents and %d of reindexes", len(pending), len(building))
            return set(pending) | set(building)

    def join(self, timeout_ms=60_000):
        """Wait until the in-process queue is empty and idle (tests, the CLI)."""
        self.broker.join(INGEST_QUEUE, timeout=timeout_ms, fail_fast=True)
        if self.worker is not None:
            self.worker.join()

    def stop(self):
        with self._lock:
            if self.worker is not None:
                self.worker.stop(timeout=5000)
                self.worker = None


def jobs(app=None) -> Jobs:
    return (app or current_app).extensions["spacio.jobs"]
