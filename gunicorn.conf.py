"""gunicorn settings, read from the environment (PaaS conventions: PORT, WEB_CONCURRENCY).

The web runs gevent workers: one worker holds many concurrent requests and streams.
The embedded default (SQLite, in-process rate limits) must run as ONE worker process.
"""

import datetime
import json
import logging
import os
import shutil
import sys
import tempfile

from gunicorn import glogging


def _embedded():
    uri = os.environ.get("SPACIO_SQLALCHEMY_DATABASE_URI", "")
    return not uri or uri.startswith("sqlite")


bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "gevent"
workers = 1 if _embedded() else int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))  # a worker silent this long is restarted
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))  # SIGTERM: finish requests
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# The app writes one access line per request itself (spacio.logs: route template, status,
# duration, request id, in SPACIO_LOG_FORMAT). gunicorn's own access log is off unless
# GUNICORN_ACCESSLOG names a file or "-"; its format then leaves out the query string and the
# Referer (a frontend page such as /join?token=... would put an invite token in the log).
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def _json_logs():
    """SPACIO_LOG_FORMAT as spacio.logs reads it: unset = json unless stderr is a terminal."""
    fmt = os.environ.get("SPACIO_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    return fmt == "json"


class _JsonFormatter(logging.Formatter):
    """spacio.logs.JsonFormatter's fields. Not imported from spacio: the master must not
    import the app before the gevent workers patch the standard library."""

    def format(self, record):
        entry = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                 .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                 "request_id": None}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class JsonLogger(glogging.Logger):
    """gunicorn's own lines (boot, worker exits, its access log) as JSON too, so a log
    collector reads one format from the web process."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(_JsonFormatter())


if _json_logs():
    logger_class = JsonLogger
# only trust X-Forwarded-* from the platform's router (see SPACIO_PROXY_FIX_X_FOR)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


# Prometheus multiprocess mode: each web worker writes its samples to files here and /metrics
# in any worker sums them (spacio.metrics). Set before the app (and prometheus_client) loads.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="spacio-metrics-")


def on_starting(server):
    """A directory the environment named may hold a previous run's files: start empty."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


def child_exit(server, worker):
    """A dead worker's live gauges leave the exposition (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_worker_init(worker):
    """The embedded default (no Redis) ingests inside the web process: start its worker
    threads with the app, re-enqueueing what a previous process left unfinished."""
    from spacio.jobs import jobs

    jobs(worker.wsgi).start_inprocess_worker()


def worker_exit(server, worker):
    """Close the plugins' connection pools while the worker's gevent hub still runs: a pool
    left to the garbage collector at exit prints a traceback on every shutdown."""
    from spacio.rag import registry

    app = getattr(worker, "wsgi", None)
    if app is not None and "spacio.rag" in getattr(app, "extensions", {}):
        registry(app).close()
