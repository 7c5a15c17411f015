"""gunicorn settings, read from the environment (PaaS conventions: PORT, WEB_CONCURRENCY).

The web runs gevent workers: one worker holds many concurrent requests and streams.
The embedded default (SQLite, in-process rate limits) must run as ONE worker process.
"""

import datetime
import json
import logging
import os
import shutil
import ssl
import sys
import tempfile
import uuid
from http import HTTPStatus

from gunicorn import glogging, util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker


def _embedded():
    uri = os.environ.get("SPACIO_SQLALCHEMY_DATABASE_URI", "")
    return not uri or uri.startswith("sqlite")


bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# worker_class: JsonErrorsWorker below, gunicorn's gevent worker answering its own errors as JSON
workers = 1 if _embedded() else int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))  # a worker silent this long is restarted
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))  # SIGTERM: finish requests
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# What gunicorn reads before the app sees a request (its defaults; the request line is capped at
# 8190 by gunicorn): beyond them it answers 414 uri_too_long or 431 headers_too_large itself.
limit_request_line = int(os.environ.get("GUNICORN_LIMIT_REQUEST_LINE", "4094"))
limit_request_fields = int(os.environ.get("GUNICORN_LIMIT_REQUEST_FIELDS", "100"))
limit_request_field_size = int(os.environ.get("GUNICORN_LIMIT_REQUEST_FIELD_SIZE", "8190"))
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
                 "request_id": getattr(record, "request_id", None)}
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


# Requests gunicorn refuses before the app sees them: (its exception, status, reason, message),
# the first that matches. Any other of its parse errors is a 400 too.
_REFUSED = [
    (http_errors.LimitRequestLine, 414, "uri_too_long",
     "The request line (method, path and query string) is too long."),
    (http_errors.LimitRequestHeaders, 431, "headers_too_large", "The request headers are too many or too large."),
    (http_errors.UnsupportedTransferCoding, 501, "unsupported_transfer_coding",
     "Only the chunked transfer coding is supported."),
    (http_errors.ExpectationFailed, 417, "expectation_failed", "Only 'Expect: 100-continue' is supported."),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden", "Proxy requests are not accepted from this address."),
    (ssl.SSLError, 403, "forbidden", "The TLS connection failed."),
    ((http_errors.InvalidRequestLine, http_errors.InvalidRequestMethod), 400, "bad_request",
     "The request line is not valid HTTP."),
    (http_errors.InvalidHTTPVersion, 400, "bad_request", "Only HTTP/1.0 and HTTP/1.1 are supported."),
    ((http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding), 400, "bad_request",
     "A request header is not valid."),
    (http_errors.ParseException, 400, "bad_request", None),
]
# gunicorn's own faults (its configuration, a header the app sent) that also reach handle_error
_NOT_REFUSED = (http_errors.ConfigurationProblem, http_errors.InvalidResponseHeader,
                http_errors.InvalidResponseHeaderName)


class JsonErrorsWorker(GeventWorker):
    """gunicorn's gevent worker, answering the requests it refuses (a request line or headers over
    the limits above, a malformed request line, method, version or header) with the app's one JSON
    error body and an ``X-Request-ID`` that its log line names, instead of gunicorn's HTML page.
    The request never reached the app, so the id is a fresh one."""

    def handle_error(self, req, client, addr, exc):
        # imported here, in a worker serving requests, whose app (loaded after gevent patched the
        # standard library) has imported them already; never at the top of this file
        from spacio import logs
        from spacio.errors import error_body

        request_id = uuid.uuid4().hex
        refused = next((entry for entry in _REFUSED if isinstance(exc, entry[0])), None)
        ip = (addr or ("",))[0]
        logs.set_job_request_id(request_id)  # the log line's request_id (no request context here)
        try:
            if refused and not isinstance(exc, _NOT_REFUSED):
                _, code, reason, message = refused
                # the exception's class, not its text: that can quote the request line or a header
                self.log.warning("refused a request from ip=%s: %s %s (%s)", ip, code, reason, type(exc).__name__)
            else:
                code, reason, message = 500, None, None
                self.log.error("error handling a request from ip=%s: %s %s", ip, getattr(req, "method", None),
                               getattr(req, "path", None), exc_info=exc)
        finally:
            logs.set_job_request_id(None)
        body = json.dumps(error_body(code, reason, message)).encode()
        head = (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"X-Request-ID: {request_id}\r\n\r\n")
        try:
            util.write_nonblock(client, head.encode() + body)
        except Exception:
            self.log.debug("Failed to send error message.")


worker_class = JsonErrorsWorker
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
