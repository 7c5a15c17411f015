"""CPU-bound work off the gevent hub.

Under ``gunicorn -k gevent`` every greenlet shares one OS thread: a parse or an embedding
running there stalls every open request and stream until it ends. ``in_real_thread`` runs
such work on gevent's pool of real OS threads (onnxruntime and most of pypdf's work then
run in parallel with the hub) and simply calls it when gevent is not in use.
"""


def gevent_active():
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


def in_real_thread(fn, *args, **kwargs):
    if not gevent_active():
        return fn(*args, **kwargs)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args, kwargs)


def plugin_runner(plugin, cpu_bound=True):
    """How a request calls a plugin: on a real thread (``in_real_thread``) when it computes,
    directly on the greenlet when it says ``cpu_bound = False`` (its calls wait on I/O that
    cooperates with gevent, and its pool's locks and queues are greenlets': pgvector's
    psycopg pool breaks when used from a real thread). ``cpu_bound`` is the default for a
    plugin that says nothing (see ``spacio.rag.contracts``)."""
    return in_real_thread if getattr(plugin, "cpu_bound", cpu_bound) else _direct


def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)
