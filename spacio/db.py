"""Column types and helpers shared by the models; the PostgreSQL connection pool's checks and order."""

import select
import threading
import uuid
from collections import deque
from datetime import datetime, timezone

from sqlalchemy import DateTime, TypeDecorator, Uuid
from sqlalchemy.orm import mapped_column
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import queue as sqla_queue


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def uuid_pk():
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def created_at():
    return mapped_column(UTCDateTime, nullable=False, default=utcnow)


def updated_at():
    return mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)



def include_in_migrations(name, type_, parent_names):
    """Alembic's ``include_name``: vector-store plugins keep their own tables (``vs_*``)
    next to ours, and autogenerate must not offer to drop them."""
    return not (type_ == "table" and name.startswith("vs_"))


def hold_owners(user_id, space_id) -> bool:
    """Take the first locks of a transaction that writes rows under a user and a space (a
    document's chunks, a chat's messages, usage records): a key-share lock on the user's row,
    then on the space's. Deleting an account or a space locks that row before the rows below
    it, so it waits for this transaction instead of deadlocking with it (PostgreSQL; SQLite
    locks the whole file). ``user_id`` may be a scalar subquery. Returns whether the space
    still exists."""
    from sqlalchemy import select

    from spacio.auth.models import User
    from spacio.extensions import db
    from spacio.spaces.models import Space

    db.session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
    return db.session.scalar(select(Space.id).where(Space.id == space_id).with_for_update(key_share=True)) is not None


def _unpatched_poll():
    """``select.poll`` as the OS gives it, also under gevent's monkey patching: a zero-timeout
    poll must not be a trip through the hub."""
    try:
        from gevent.monkey import get_original
    except ImportError:  # pragma: no cover - gevent is a dependency of the web process
        from select import poll
        return poll
    return get_original("select", "poll")


_POLL = _unpatched_poll()
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open

def connection_alive(dbapi_connection) -> bool:
    """Whether a pooled psycopg connection checked out now can be used, without a round trip.

    An idle connection has nothing to read: the server only ever answers a query. So when
    its socket is readable, the server has written to it unasked (PostgreSQL says
    "terminating connection" before it closes one: a restart, a failover, idle timeouts) or
    closed it (the end of the stream is readable too); either way the connection is dead. A
    zero-timeout ``poll`` costs a system call where ``pool_pre_ping``'s ``SELECT 1`` costs a
    round trip (about 70 us of CPU under gevent, on every request). What neither notices in
    time, a server gone without closing its sockets, fails the next statement: SQLAlchemy then
    sees a disconnect and replaces the pool's connections, and the request answers 503."""
    if dbapi_connection.closed or dbapi_connection.broken:
        return False
    if dbapi_connection.pgconn.transaction_status != _IDLE:
        return False
    poller = _POLL()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def check_connections_on_checkout(engine) -> None:
    """``connection_alive`` on every checkout from ``engine``'s pool (PostgreSQL through
    psycopg): a dead connection is discarded and the pool hands out another one, or opens a
    new one, so no request gets a connection that died while it sat in the pool."""
    from sqlalchemy import event, exc

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection, _record, _proxy):
        if not connection_alive(dbapi_connection):
            raise exc.DisconnectionError("the pooled connection was closed by the server")


# ------------------------------------------------------------------ a pool that serves in turn


class _Waiter:
    __slots__ = ("event", "item")

    def __init__(self):
        self.event = threading.Event()  # gevent's Event once threading is monkey-patched
        self.item = None


class FairQueue(sqla_queue.Queue):
    """SQLAlchemy's pool queue, but a connection given back goes to the caller that has
    waited longest, and nobody takes one while others are waiting.

    SQLAlchemy's own queue wakes a waiter when a connection comes back, and whoever asks
    first takes it: under gevent that is nearly always a request that has only just arrived
    (the woken one runs later), so under load the same waiters lose again and again. wrk with
    50 connections on one gevent worker and the default pool of 5 + 10: GET /api/v1/spaces
    p50 48 ms but p99 3.6 s, some requests close to the pool timeout (a 503)."""

    def __init__(self, maxsize=0, use_lifo=False):
        super().__init__(maxsize, use_lifo)
        self.waiters = deque()  # while anyone waits, the queue itself is empty

    def put(self, item, block=True, timeout=None):
        with self.mutex:
            if self.waiters:
                waiter = self.waiters.popleft()
                waiter.item = item
                waiter.event.set()
                return
            super().put(item, block, timeout)

    def get(self, block=True, timeout=None):
        with self.mutex:
            if not self.waiters and self._qsize():
                return super().get(False)
            if not block:
                raise sqla_queue.Empty()
            waiter = _Waiter()
            self.waiters.append(waiter)
        try:
            waiter.event.wait(timeout)
        except BaseException:  # the waiting greenlet was killed (a timeout, a client gone)
            with self.mutex:
                if not waiter.event.is_set():
                    self.waiters.remove(waiter)
                    raise
            self.put(waiter.item)  # handed one meanwhile: to the next in line, not lost
            raise
        with self.mutex:
            if waiter.event.is_set():  # also when handed one just as the wait timed out
                return waiter.item
            self.waiters.remove(waiter)
        raise sqla_queue.Empty()


class FairQueuePool(QueuePool):
    """QueuePool whose waiting checkouts are served in order of arrival (``FairQueue``)."""

    _queue_class = FairQueue
