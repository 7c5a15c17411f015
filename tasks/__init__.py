"""The ingestion workers: ``dramatiq tasks`` (see the Procfile).

Builds the app from the ``SPACIO_*`` environment and makes its RedisBroker the global
broker BEFORE any actor exists; the actors are declared on it by ``spacio.jobs``. Each
worker process imports this module once, so each has its own app and database pool.
"""

import signal
import time

import dramatiq

from spacio import create_app, logs
from spacio.jobs import jobs

app = create_app()
logs.adopt_handlers(app)  # dramatiq set up this process's logging: our format on its handlers
_jobs = jobs(app)
if _jobs.inprocess:
    raise RuntimeError("`dramatiq tasks` needs SPACIO_REDIS_URL: without Redis the web process runs "
                       "ingestion itself (the embedded default) and there is no queue to share.")
dramatiq.set_broker(_jobs.broker)
ingest_document = _jobs.ingest
build_document = _jobs.build


def _one_stop_per_sigterm(grace_s=5.0):
    """A platform that stops a container signals every process in it (Heroku: SIGTERM to the
    whole process group), and dramatiq's main process forwards its own SIGTERM to each worker
    process too. Dramatiq takes a second SIGTERM as "kill now", so the document in hand would
    be abandoned. In a worker process (this module is imported after dramatiq installed its
    handler), a repeat within ``grace_s`` of the first counts as the same stop request."""
    handler = signal.getsignal(signal.SIGTERM)
    if getattr(handler, "__qualname__", "") != "worker_process.<locals>.termhandler":
        return  # not a dramatiq worker process (the main process, a shell, a test)
    first = []

    def once(signum, frame):
        now = time.monotonic()
        if first and now - first[0] < grace_s:
            return
        first.append(now)
        handler(signum, frame)

    signal.signal(signal.SIGTERM, once)


_one_stop_per_sigterm()
