"""Giving the heap a background job freed back to the operating system.

Ingestion allocates a lot for a while and then frees it: pypdf's objects, the tokenizer's
encodings, onnxruntime's buffers and numpy arrays, on the real threads that parse and embed.
glibc's malloc keeps what is freed: each thread that allocates gets an arena of its own (up to
8 per core), and an arena gives memory back by itself only from its top, which a few live
allocations pin. On the embedded default, where the web worker ingests, its resident set went
from 270 MiB (warm) to 794 MiB after the 128 eval files and was still 653 MiB a minute later
(bench/memory.py), though less than 120 MiB of it was in use; ``malloc_trim(0)`` hands the
free pages of every arena back (417 MiB), in about 20 ms on that heap. So the workers trim
after each job (``ReleaseFreedHeap``), on a real thread, off the gevent hub. Other C libraries
(musl) have no ``malloc_trim``: nothing to do there.
"""

import ctypes
import ctypes.util
import logging

from dramatiq.middleware import Middleware

from spacio.concurrency import in_real_thread

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc
        return None


_TRIM = _malloc_trim()


def release_freed_heap():
    """Return the free pages of every malloc arena to the OS; True if the C library can."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class ReleaseFreedHeap(Middleware):
    """After every message, successful or not: the document's memory is garbage by then."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        try:
            in_real_thread(release_freed_heap)
        except Exception:  # never let housekeeping fail a job
            log.warning("releasing freed memory failed", exc_info=True)
