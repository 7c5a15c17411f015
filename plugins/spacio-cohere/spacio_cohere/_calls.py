"""Calling Cohere: one client per plugin, our retries (the SDK's are off), and every SDK
or transport error mapped to the contract's errors. Shared by all Cohere plugins."""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import threading
import time
from typing import Any, Callable, TypeVar

import cohere
import httpx
from cohere.core.api_error import ApiError

# ``cohere.ClientV2`` imports the SDK's client (hundreds of modules, 0.5-1.3 s measured
# here) lazily, on first use. Importing it by name does that with the plugin, which the
# host imports at startup, rather than inside the first request, where it would stall
# every other stream of a gevent worker for that long. (No network: not the I/O the
# contract forbids.)
from cohere.client_v2 import ClientV2
from marshmallow import Schema, ValidationError, fields, post_load, validate

from spacio.rag.contracts import InvalidInput, PluginError, UpstreamUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

API_KEY_ENV = "COHERE_API_KEY"
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: statuses worth another try: rate limits, request timeouts, conflicts, cancelled, server errors
RETRYABLE = {408, 409, 429, 499}
#: a Retry-After longer than this is not slept through: the error goes to the host, whose
#: queue retries later with ``retry_after`` as the hint, instead of holding a worker
MAX_SLEEP = 60.0


class CohereOptions(Schema):
    """Options common to every Cohere plugin. ``api_key`` falls back to ``COHERE_API_KEY``;
    a missing key is a configuration error, reported when the options are loaded."""

    api_key = fields.String(load_default=None, validate=validate.Length(min=1))
    base_url = fields.Url(load_default=None, schemes={"http", "https"}, require_tld=False)
    timeout = fields.Float(load_default=60.0, validate=validate.Range(min=0, min_inclusive=False))
    max_retries = fields.Integer(load_default=4, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=1.0, validate=validate.Range(min=0))

    @post_load
    def _api_key_from_environment(self, data: dict, **kwargs: Any) -> dict:
        # keys pasted from files often end with a newline, which httpx refuses in a header
        data["api_key"] = (data.get("api_key") or os.environ.get(API_KEY_ENV) or "").strip() or None
        if data["api_key"] and not _PRINTABLE_ASCII.fullmatch(data["api_key"]):
            raise ValidationError("the Cohere API key must be printable ASCII without spaces "
                                  "(it goes into an HTTP header)", "api_key")
        if not data["api_key"]:
            raise ValidationError(
                f"a Cohere API key is required: set the plugin option api_key "
                f"(SPACIO_PLUGINS__<KIND>__COHERE__API_KEY) or the environment variable {API_KEY_ENV}",
                "api_key")
        return data


class CohereCaller:
    """Owns the lazily created ``cohere.ClientV2`` and runs calls with retries."""

    def __init__(self, *, api_key: str, base_url: str | None, timeout: float, max_retries: int,
                 backoff: float, max_sleep: float = MAX_SLEEP, sleep: Callable[[float], None] = time.sleep):
        self.api_key = api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        #: the longest wait before a retry; a longer Retry-After goes to the host instead.
        #: Plugins on a request path (chat, rerank) pass less: a person is waiting.
        self.max_sleep = max_sleep
        self._sleep = sleep
        self._client: cohere.ClientV2 | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> cohere.ClientV2:
        """Created on first use: constructing it builds an httpx client and SSL context."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = ClientV2(
                        api_key=self.api_key,
                        # None means Cohere's production URL. Passing it explicitly also stops
                        # the SDK from reading CO_API_URL (it does that once, at import).
                        base_url=self.base_url,
                        timeout=self.timeout,
                        # ours are the only retries: the SDK would otherwise retry 429/5xx twice
                        # more per attempt, multiplying our count and ignoring our backoff
                        max_retries=0,
                        client_name="spacio",
                        log_warning_experimental_features=False,
                    )
        return self._client

    def call(self, what: str, fn: Callable[[cohere.ClientV2], T]) -> T:
        """Run ``fn(client)``; retry what is worth retrying with exponential backoff (or the
        server's Retry-After), then raise ``UpstreamUnavailable``. ``what`` names the
        operation in messages ("embed", "chat", "rerank"). ``fn`` may itself raise
        ``UpstreamUnavailable`` (a failure it read from a 200 response) to be retried too."""
        attempt = 0
        while True:
            try:
                return fn(self.client)
            except (ApiError, httpx.TransportError) as exc:
                cause, error = exc, map_error(what, exc)
            except UpstreamUnavailable as exc:
                cause, error = exc.__cause__, exc
            except (TypeError, AttributeError, KeyError) as exc:
                # the SDK choked on a 2xx body of the wrong shape (JSON, but not Cohere's: a
                # misconfigured proxy); logged with its traceback in case it is our bug instead
                log.warning("cohere %s: unreadable response", what, exc_info=True)
                cause, error = exc, UpstreamUnavailable(
                    f"Cohere {what} returned a response that could not be read ({type(exc).__name__}: {exc})",
                    reason="upstream_bad_response")
            if not isinstance(error, UpstreamUnavailable) or attempt >= self.max_retries:
                raise error from cause
            if error.retry_after is None:
                delay = self._backoff(attempt)
            elif error.retry_after <= self.max_sleep:
                delay = error.retry_after
            else:
                raise error from cause
            attempt += 1
            log.info("cohere %s failed (%s), retry %d/%d in %.2fs", what, error.message, attempt,
                     self.max_retries, delay)
            self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # exponential with +-25 % jitter, so workers throttled together do not retry together
        return min(self.backoff * 2 ** attempt * random.uniform(0.75, 1.25), self.max_sleep)


def map_error(what: str, exc: ApiError | httpx.TransportError) -> PluginError:
    """The contract's error for an SDK or transport error. Never returns a bare library error."""
    if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        # the request could not even be written (a control character in the key, a bad URL)
        return PluginError(f"Cohere {what}: invalid request setup ({type(exc).__name__}: {exc}); "
                           "check the api_key and base_url options", reason="upstream_config")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamUnavailable(f"Cohere {what} timed out ({type(exc).__name__})", reason="upstream_timeout")
    if isinstance(exc, httpx.TransportError):
        return UpstreamUnavailable(f"Cohere {what}: cannot reach the API ({type(exc).__name__}: {exc})")
    status = exc.status_code or 0
    detail = _detail(exc.body)
    if 200 <= status < 300:  # the SDK could not parse a successful response
        return UpstreamUnavailable(f"Cohere {what} returned a response that could not be read: {detail}",
                                   reason="upstream_bad_response")
    if status in (401, 403, 498):
        return PluginError(f"Cohere rejected the API key for {what} (HTTP {status}: {detail}); "
                           f"check the api_key option or {API_KEY_ENV}", reason="upstream_auth")
    if status in (400, 422):
        return InvalidInput(f"Cohere refused the {what} request (HTTP {status}): {detail}",
                            reason="upstream_rejected_input")
    if status == 404:
        return PluginError(f"Cohere {what}: not found (HTTP 404: {detail}); check the model name and base_url",
                           reason="upstream_not_found")
    if status in RETRYABLE or status >= 500:
        return UpstreamUnavailable(f"Cohere {what} is unavailable (HTTP {status}: {detail})",
                                   retry_after=_retry_after(exc.headers))
    return PluginError(f"Cohere {what} failed (HTTP {status}: {detail})", reason="upstream_error")


def _detail(body: Any) -> str:
    """Cohere's error bodies are ``{"id": ..., "message": ...}``; keep messages short."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = body["message"]
    else:
        text = str(body)
    return text if len(text) <= 300 else text[:297] + "..."


def _retry_after(headers: dict[str, str] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
