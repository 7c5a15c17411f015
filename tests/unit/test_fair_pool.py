"""``spacio.db.FairQueue``: the PostgreSQL pool's queue serves waiting callers in order of
arrival (tests/integration/test_gevent.py checks it through the app's own pool, and with
greenlets killed while they wait)."""

import threading
import time

import pytest

import spacio.db
from sqlalchemy.util.queue import Empty

from spacio.db import FairQueue


def _until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _taken_queue():
    queue = FairQueue(1)
    queue.put("connection")
    return queue, queue.get(False)


def test_an_item_given_back_goes_to_the_waiter_not_to_a_newcomer():
    queue, held = _taken_queue()
    got = []
    waiter = threading.Thread(target=lambda: got.append(queue.get(True, 5)))
    waiter.start()
    _until(lambda: len(queue.waiters) == 1)

    queue.put(held)
    with pytest.raises(Empty):
        queue.get(False)  # SQLAlchemy's own queue hands it to whoever asks first
    waiter.join(5)
    assert got == ["connection"]
    assert queue.qsize() == 0 and not queue.waiters


def test_waiters_are_served_in_order_of_arrival():
    queue, held = _taken_queue()
    order = []

    def wait(i):
        item = queue.get(True, 5)
        order.append(i)
        queue.put(item)

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=wait, args=(i,)))
        threads[-1].start()
        _until(lambda: len(queue.waiters) == i + 1)
    queue.put(held)
    for thread in threads:
        thread.join(5)
    assert order == list(range(6))
    assert queue.get(False) == "connection"


def test_a_wait_that_times_out_leaves_the_line_and_raises_empty():
    queue, held = _taken_queue()
    started = time.monotonic()
    with pytest.raises(Empty):
        queue.get(True, 0.05)
    assert time.monotonic() - started >= 0.04
    assert not queue.waiters
    queue.put(held)  # nobody waits: it goes back into the queue
    assert queue.qsize() == 1 and queue.get(False) == "connection"


def test_without_waiters_it_is_sqlalchemys_queue():
    queue = FairQueue(2)
    queue.put("a")
    queue.put("b")
    assert queue.full()
    assert [queue.get(False), queue.get(False)] == ["a", "b"]
    with pytest.raises(Empty):
        queue.get(False)



def test_a_waiter_interrupted_as_it_is_handed_an_item_passes_it_on(monkeypatch):
    """An exception raised in a waiter as it wakes (gevent kills a greenlet that way) after a
    connection was handed to it: the connection goes on to the next waiter, not lost."""
    queue, held = _taken_queue()

    class Interrupted(threading.Event):
        def wait(self, timeout=None):
            super().wait(timeout)
            raise KeyboardInterrupt  # stands in for gevent's GreenletExit

    class FirstInterrupted(spacio.db._Waiter):
        made = 0

        def __init__(self):
            super().__init__()
            if FirstInterrupted.made == 0:
                self.event = Interrupted()
            FirstInterrupted.made += 1

    monkeypatch.setattr(spacio.db, "_Waiter", FirstInterrupted)
    outcomes = {}

    def wait(name):
        try:
            outcomes[name] = queue.get(True, 5)
        except BaseException as error:  # noqa: BLE001 - recorded
            outcomes[name] = type(error).__name__

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    _until(lambda: len(queue.waiters) == 1)
    second = threading.Thread(target=wait, args=("second",))
    second.start()
    _until(lambda: len(queue.waiters) == 2)
    queue.put(held)
    first.join(5)
    second.join(5)
    assert outcomes == {"first": "KeyboardInterrupt", "second": "connection"}
    assert not queue.waiters and queue.qsize() == 0
