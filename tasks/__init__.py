"""The ingestion workers: ``dramatiq tasks`` (see the Procfile).

Builds the app from the ``SPACIO_*`` environment and makes its RedisBroker the global
broker BEFORE any actor exists; the actors are declared on it by ``spacio.jobs``. Each
worker process imports this module once, so each has its own app and database pool.
"""

import dramatiq

from spacio import create_app
from spacio.jobs import jobs

app = create_app()
_jobs = jobs(app)
if _jobs.inprocess:
    raise RuntimeError("`dramatiq tasks` needs SPACIO_REDIS_URL: without Redis the web process runs "
                       "ingestion itself (the embedded default) and there is no queue to share.")
dramatiq.set_broker(_jobs.broker)
ingest_document = _jobs.ingest
