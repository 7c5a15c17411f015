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

    ok, outcome = gevent.get_hub().threadpool.apply(_outcome, (fn, args, kwargs))
    if ok:
        return outcome
    try:
        raise outcome
    finally:
        outcome = None  # the exception refers to this frame through its traceback: no cycle


def _outcome(fn, args, kwargs):
    """(True, what ``fn`` returned) or (False, what it raised). The caller raises it again:
    gevent's pool prints every exception that escapes a task to stderr as a raw traceback,
    even one the caller expects and handles (an encrypted PDF's InvalidInput)."""
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:
        return False, exc


def plugin_runner(plugin, cpu_bound=True):
    """How a request calls a plugin: on a real thread (``in_real_thread``) when it computes,
    directly on the greenlet when it says ``cpu_bound = False`` (its calls wait on I/O that
    cooperates with gevent, and its pool's locks and queues are greenlets': pgvector's
    psycopg pool breaks when used from a real thread). ``cpu_bound`` is the default for a
    plugin that says nothing (see ``spacio.rag.contracts``)."""
    return in_real_thread if getattr(plugin, "cpu_bound", cpu_bound) else _direct


def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)
