"""Process logging: one line per record, JSON or text, each with the request id.

``init_app`` configures the root logger once per process (a second app, as the tests
build, only updates the format and level of the one handler). Every record gets a
``request_id``: the request's (``g.request_id``, see ``spacio.app``) inside a request,
else the one a background job carries (``job_request_id``, set by ``spacio.jobs`` from
the Dramatiq message), else ``None``.

``SPACIO_LOG_FORMAT``: ``json`` (one object per line: ts, level, logger, message,
request_id, exc when there is an exception, and the extra fields a line carries) or
``text``. Unset: ``text`` when stderr is a terminal (``make run``), ``json`` otherwise
(the Procfile's processes on a platform, whose log collectors parse JSON lines).
"""

import contextvars
import datetime
import json
import logging
import sys
import time

from flask import g, has_request_context, request

_job_request_id = contextvars.ContextVar("spacio_job_request_id", default=None)
access_log = logging.getLogger("spacio.access")

# the attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s] [%(request_id)s] %(message)s"
# ops endpoints a platform or Prometheus polls every few seconds: access lines at DEBUG
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def current_request_id():
    if has_request_context():
        return g.get("request_id")
    return _job_request_id.get()


def set_job_request_id(request_id):
    """The request id of the job this thread is running now (None when it is done), or of a
    request gunicorn refused before the app saw it (gunicorn.conf.py)."""
    _job_request_id.set(request_id or None)


_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner or a process
    manager may replace it after the handler exists)."""

    _spacio = True

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def formatter(fmt):
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise RuntimeError(f"SPACIO_LOG_FORMAT must be json or text, not {fmt!r}.")


_factory_installed = False


def _install_record_factory():
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        record.request_id = current_request_id()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def init_app(app):
    """Set up the process's logging from the app's LOG_FORMAT and LOG_LEVEL (once per
    process: a later app only changes format and level)."""
    _install_record_factory()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_spacio", False)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter(app.config["LOG_FORMAT"]))
    root.setLevel(str(app.config["LOG_LEVEL"]).upper())
    # our root handler prints the app's logger too: no second line from Flask's own handler
    from flask.logging import default_handler

    app.logger.removeHandler(default_handler)


def adopt_handlers(app):
    """In a process whose runner already set up logging (a ``dramatiq`` worker writes to a
    pipe its main process reads): give its handlers our format instead of adding one."""
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "_spacio", False)]
    if not others:
        return
    fmt = formatter(app.config["LOG_FORMAT"])
    for handler in root.handlers[:]:
        if getattr(handler, "_spacio", False):
            root.removeHandler(handler)
        else:
            handler.setFormatter(fmt)


def request_started():
    g.request_started = time.perf_counter()


def request_finished(response):
    """The access line of one request: method, route template (never the raw path or its
    query string), status, duration. Returns the duration in seconds and the route."""
    now = time.perf_counter()
    duration = now - g.get("request_started", now)
    rule, method, status = request.url_rule, request.method, response.status_code
    route = rule.rule if rule is not None else "<unmatched>"
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    if access_log.isEnabledFor(level):
        ms = duration * 1000
        access_log.log(level, "%s %s %s %.1f ms", method, route, status, ms,
                       extra={"method": method, "route": route, "status": status, "duration_ms": round(ms, 2)})
    return duration, route
