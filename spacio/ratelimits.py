"""flask-limiter, with the moving window on Redis checked in one round trip.

flask-limiter asks its strategy twice per rate-limited request: ``hit`` (before the view:
take an entry, or refuse with 429) and, for the ``X-RateLimit-*`` headers (and a 429's
``Retry-After``), ``get_window_stats`` (after the view). limits' moving window on Redis
makes each one a Lua script call, so two round trips to Redis for every authenticated
request. ``RedisMovingWindow`` takes the entry and reads the window in one script and keeps
what it read in ``g`` for the header read of the same request; the window is read at the
moment of the hit, under the same lock (a Lua script runs alone), so ``Remaining`` is this
request's.

Same limits, same keys, same list of timestamps per key as limits' own scripts: counts carry
over a deploy, and processes with either version share them. When Redis fails, the error
reaches flask-limiter as before, which falls back to its in-process storage (an ordinary
moving window) and comes back to Redis when it answers again.
"""

import functools
import logging
import time

import flask_limiter
from flask import g, has_request_context, request
from limits import WindowStats
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

# limits' acquire_moving_window.lua, then its moving_window.lua on the same key and time:
# KEYS[1] is the window's list of timestamps, newest first; ARGV: now, limit, expiry, cost.
# Returns {1 if taken else 0, the oldest timestamp in the window (as text), entries in it}.
HIT_AND_READ = """
local timestamp = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])

local acquired = 0
if amount <= limit then
    local entry = redis.call('lindex', KEYS[1], limit - amount)
    if not (entry and tonumber(entry) >= timestamp - expiry) then
        local entries = {}
        for i = 1, amount do
            entries[i] = timestamp
        end
        for i = 1, #entries, 5000 do
            redis.call('lpush', KEYS[1], unpack(entries, i, math.min(i + 4999, #entries)))
        end
        redis.call('ltrim', KEYS[1], 0, limit - 1)
        redis.call('expire', KEYS[1], expiry)
        acquired = 1
    end
end

local target = timestamp - expiry
local low, high, oldest = 0, limit - 1, nil
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', KEYS[1], mid))
    if value and value >= target then
        oldest = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
if oldest then
    return {acquired, tostring(redis.call('lindex', KEYS[1], oldest)), oldest + 1}
end
return {acquired, tostring(timestamp), 0}
"""


class RedisMovingWindow(MovingWindowRateLimiter):
    """The moving window on Redis: ``hit`` also reads the window, for this request's headers."""

    def __init__(self, storage):
        super().__init__(storage)
        self._hit_and_read = storage.get_connection().register_script(HIT_AND_READ)

    def hit(self, item, *identifiers, cost=1):
        key = item.key_for(*identifiers)
        expiry = item.get_expiry()
        acquired, oldest, entries = self._hit_and_read(
            [self.storage.prefixed_key(key)], [time.time(), item.amount, expiry, cost])
        if has_request_context():
            windows = g.setdefault("rate_limit_windows", {})
            windows[key] = WindowStats(float(oldest) + expiry, item.amount - int(entries))
        return bool(acquired)

    def get_window_stats(self, item, *identifiers):
        """The window this request's hit read (once), else a read from Redis."""
        windows = g.get("rate_limit_windows") if has_request_context() else None
        window = windows.pop(item.key_for(*identifiers), None) if windows else None
        return window if window is not None else super().get_window_stats(item, *identifiers)


log = logging.getLogger(__name__)


def counted_anyway(key_func):
    """A key function that cannot fail. flask-limiter reads any exception raised while it
    evaluates a limit as its storage being down: it switched to in-memory counts (a second,
    empty budget) and skipped the request. A client could then double the login limit by
    sending a body the key function could not read. A key that cannot be computed is the
    client's address, so the request is still counted."""

    @functools.wraps(key_func)
    def key():
        try:
            return key_func()
        except Exception as error:  # noqa: BLE001 - whatever it is, the request is counted
            log.warning("rate-limit key %s failed (%s); counting by address", key_func.__name__,
                        error.__class__.__name__)
            return f"{key_func.__name__}-failed:{request.remote_addr or 'unknown'}"

    return key


class Limiter(flask_limiter.Limiter):
    """flask-limiter's Limiter; a moving window on Redis uses ``RedisMovingWindow``, and key
    functions never fail (``counted_anyway``)."""

    def limit(self, limit_value, *, key_func=None, **kwargs):
        return super().limit(limit_value, key_func=key_func and counted_anyway(key_func), **kwargs)

    def shared_limit(self, limit_value, scope, *, key_func=None, **kwargs):
        return super().shared_limit(limit_value, scope, key_func=key_func and counted_anyway(key_func), **kwargs)

    def init_app(self, app):
        super().init_app(app)
        # flask-limiter builds its strategy from a name (limits' table of strategies):
        # swap in the one-round-trip version of the one it built
        if self.enabled and type(self._limiter) is MovingWindowRateLimiter and isinstance(self.storage, RedisStorage):
            self._limiter = RedisMovingWindow(self.storage)
