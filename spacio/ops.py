"""Operational endpoints outside /api/v1: liveness, readiness, metrics, the docs' local assets."""

import logging
import threading
import time

from flask import Blueprint, Response, current_app, request, send_from_directory
from sqlalchemy import text
from swagger_ui_bundle import swagger_ui_path

from spacio import logs, metrics
from spacio.errors import error_body
from spacio.extensions import db
from spacio.rag import registry

blp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@blp.get("/health")
def health():
    """Liveness: the process answers."""
    return {"status": "ok"}


@blp.get("/ready")
def ready():
    """Readiness: the database, Redis (when configured) and the selected vector store each
    answer within READY_TIMEOUT_S. The checks run at once; a check still running at the
    deadline counts as failed and is left to finish on its own."""
    timeout = float(current_app.config["READY_TIMEOUT_S"])
    checks = {"database": _database_check(db.engine)}
    if current_app.config["REDIS_URL"]:
        checks["redis"] = _redis_check(current_app.config["REDIS_URL"], timeout)
    checks["vector_store"] = _vector_store_check(registry(), timeout)
    results = _run(checks, timeout)
    failed = {name: problem for name, problem in results.items() if problem != "ok"}
    if failed:
        message = "Not ready: " + ", ".join(sorted(failed)) + "."
        return error_body(503, "not_ready", message, failed), 503, {"Retry-After": "5"}
    return {"status": "ready", "checks": results}


def _database_check(engine):
    def check():
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    return check


def _redis_check(url, timeout):
    def check():
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    return check


def _vector_store_check(plugins, timeout):
    def check():
        plugins.ready(timeout)
    return check


def _run(checks, timeout):
    """Run each check on its own thread (a greenlet under gevent); "ok", or what failed.
    The details go to the log, not to this unauthenticated response."""
    results, done = {}, threading.Event()
    lock = threading.Lock()
    request_id = logs.current_request_id()

    def run(name, check):
        logs.set_job_request_id(request_id)  # this thread's log lines carry the request's id
        try:
            check()
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - every failure is "not ready", named
            log.warning("ready: %s failed: %s: %s", name, exc.__class__.__name__, exc)
            outcome = f"unavailable ({exc.__class__.__name__})"
        with lock:
            results[name] = outcome
            if len(results) == len(checks):
                done.set()

    for name, check in checks.items():
        threading.Thread(target=run, args=(name, check), name=f"ready-{name}", daemon=True).start()
    deadline = time.monotonic() + timeout
    done.wait(max(0.0, deadline - time.monotonic()))
    with lock:
        answered = dict(results)
    for name in checks:
        if name not in answered:
            log.warning("ready: %s did not answer within %.1f s", name, timeout)
            answered[name] = f"timed out after {timeout:g} s"
    return {name: answered[name] for name in checks}


@blp.get("/metrics")
def prometheus_metrics():
    """Prometheus text exposition; needs ``Authorization: Bearer <SPACIO_METRICS_TOKEN>``
    when that is set."""
    if not metrics.authorized(current_app.config, request.headers.get("Authorization")):
        body = error_body(401, "unauthorized", "This endpoint needs the metrics token as a bearer token.")
        return body, 401, {"WWW-Authenticate": 'Bearer realm="metrics"'}
    return Response(metrics.exposition(current_app.config["REDIS_URL"]), content_type=metrics.CONTENT_TYPE)


@blp.get("/docs/assets/<path:filename>")
def swagger_assets(filename):
    """Swagger UI's files, served from the installed package (no CDN)."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
