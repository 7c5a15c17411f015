"""Chat memory: the last turns of each conversation in Redis, the database the source of truth.

Each conversation has a capped Redis list (newest first: LPUSH + LTRIM, with a TTL) of its
last messages as ``{"seq", "role", "content"}``. A list is trusted only when it is exactly
the conversation's newest messages: its ``seq`` run down from the conversation's
``message_count`` without a gap, as many as asked for. Anything else (the key expired, a
push was lost while Redis was down, two answers finished in the other order) reads the
database and writes the list again.

Redis is a cache here, never a dependency: short socket timeouts, and after an error it is
left alone for ``CHAT_MEMORY_RETRY_S`` so that a Redis outage costs each chat at most one
timeout, not one per call. No error of Redis ever fails a chat. Without ``SPACIO_REDIS_URL``
(the embedded default) the history comes from the database, an indexed read of a few rows.
"""

from __future__ import annotations

import json
import logging
import time

import redis
from flask import current_app

log = logging.getLogger(__name__)

EXTENSION = "spacio.chat.memory"


def memory(app=None) -> "ChatMemory | None":
    """The app's chat memory, or None without Redis (built on first use)."""
    app = app or current_app._get_current_object()
    if EXTENSION not in app.extensions:
        cfg = app.config
        app.extensions.setdefault(EXTENSION, ChatMemory(
            cfg["REDIS_URL"], ttl=int(cfg["CHAT_MEMORY_TTL_S"]), timeout=float(cfg["CHAT_MEMORY_TIMEOUT_S"]),
            retry_after=float(cfg["CHAT_MEMORY_RETRY_S"])) if cfg["REDIS_URL"] else None)
    return app.extensions[EXTENSION]


class ChatMemory:
    def __init__(self, url: str, *, ttl: int, timeout: float, retry_after: float, prefix: str = "spacio:chat:"):
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry_on_timeout=False, health_check_interval=30)
        self.ttl, self.retry_after, self.prefix = ttl, retry_after, prefix
        self._down_until = 0.0

    def key(self, conversation_id) -> str:
        return f"{self.prefix}{conversation_id}"

    # a failed call marks Redis down for a while; None means "ask the database"
    def _call(self, what, fn):
        if time.monotonic() < self._down_until:
            return None
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_after
            log.warning("chat memory: Redis %s failed (%s: %s); using the database for %.0f s",
                        what, exc.__class__.__name__, exc, self.retry_after)
            return None

    def recent(self, conversation_id, count: int, newest_seq: int) -> list[dict] | None:
        """The last ``count`` messages oldest first, if Redis holds exactly them; else None."""
        raw = self._call("read", lambda: self.client.lrange(self.key(conversation_id), 0, count - 1))
        if not raw:
            return None
        try:
            entries = [json.loads(item) for item in raw]
            seqs = [int(entry["seq"]) for entry in entries]
        except (ValueError, TypeError, KeyError):
            return None
        expected = list(range(newest_seq, max(0, newest_seq - count), -1))
        if seqs != expected:
            return None
        return entries[::-1]

    def replace(self, conversation_id, entries: list[dict]) -> None:
        """Write a conversation's list again from the database (``entries`` oldest first)."""
        key = self.key(conversation_id)

        def write():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            if entries:
                pipe.lpush(key, *[_dump(e) for e in entries])
                pipe.expire(key, self.ttl)
            pipe.execute()

        self._call("write", write)

    def remember(self, conversation_id, entry: dict, keep: int) -> None:
        """Add a conversation's newest message, keeping the last ``keep``."""
        key = self.key(conversation_id)

        def push():
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(key, _dump(entry))
            pipe.ltrim(key, 0, max(0, keep - 1))
            pipe.expire(key, self.ttl)
            pipe.execute()

        self._call("write", push)

    def forget(self, conversation_id) -> None:
        self._call("delete", lambda: self.client.delete(self.key(conversation_id)))


def _dump(entry: dict) -> str:
    return json.dumps({"seq": int(entry["seq"]), "role": entry["role"], "content": entry["content"]},
                      ensure_ascii=False, separators=(",", ":"))
