"""gunicorn settings, read from the environment (PaaS conventions: PORT, WEB_CONCURRENCY).

The web runs gevent workers: one worker holds many concurrent requests and streams.
The embedded default (SQLite, in-process rate limits) must run as ONE worker process.
"""

import os


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
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# only trust X-Forwarded-* from the platform's router (see SPACIO_PROXY_FIX_X_FOR)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


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
