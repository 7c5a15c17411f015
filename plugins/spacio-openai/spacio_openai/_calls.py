"""Calling an OpenAI-compatible API: one SDK client per plugin instance, our retries (the
SDK's are off), and every SDK or transport error mapped to the contract's errors. Shared by
the generator and the embedder."""

from __future__ import annotations

import email.utils
import importlib
import logging
import os
import random
import re
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai
from marshmallow import Schema, ValidationError, fields, post_load, validate

from spacio.rag.contracts import InvalidInput, PluginError, UpstreamUnavailable

# The SDK and its HTTP stack import most of their modules on first use (the chat resource,
# the stream helpers, the HTTP/1.1 connection code, the system trust store, the JSON
# parser): 66 modules, about 140 ms of the first stream measured here. Importing them with
# the plugin, which the host does at startup, keeps that out of the first request, where
# it would stall every greenlet of a worker. (No network: not the I/O the contract forbids.)
PRELOAD = ("openai.resources.chat.chat", "openai.resources.chat.completions.completions",
           "openai.resources.embeddings", "openai.lib.streaming.chat", "openai.pagination",
           "openai.types.chat.chat_completion_chunk", "openai.types.create_embedding_response",
           "httpcore2", "h11", "truststore", "jiter")
for _module in PRELOAD:
    try:
        importlib.import_module(_module)
    except ImportError:  # a later SDK may do without one: then there is nothing to preload
        pass

log = logging.getLogger(__name__)

T = TypeVar("T")

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_HOST = "api.openai.com"
#: what the SDK is given when there is no key: it refuses to build a client without one,
#: and servers that need none (Ollama, vLLM, llama.cpp, LM Studio) ignore the header
NO_KEY = "no-key"
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: statuses worth another try: request timeout, conflict, rate limit, cancelled; and 5xx
RETRYABLE = {408, 409, 429, 499}
#: a Retry-After longer than this is not slept through: the error goes to the host, whose
#: queue retries later with ``retry_after`` as the hint, instead of holding a worker
MAX_SLEEP = 60.0


class OpenAIOptions(Schema):
    """Options common to both plugins. ``api_key`` falls back to ``OPENAI_API_KEY`` and
    ``base_url`` to ``OPENAI_BASE_URL``, as the SDK does. A key is required only for
    OpenAI's own API: local servers work without one."""

    api_key = fields.String(load_default=None, validate=validate.Length(min=1))
    base_url = fields.Url(load_default=None, schemes={"http", "https"}, require_tld=False)
    timeout = fields.Float(load_default=60.0, validate=validate.Range(min=0, min_inclusive=False))
    connect_timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0, min_inclusive=False))
    max_retries = fields.Integer(load_default=4, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=1.0, validate=validate.Range(min=0))

    @post_load
    def _from_environment(self, data: dict, **kwargs: Any) -> dict:
        own_url = data.get("base_url")
        base_url = own_url or (os.environ.get(BASE_URL_ENV) or "").strip() or None
        if base_url is not None and own_url is None:
            try:
                fields.Url(schemes={"http", "https"}, require_tld=False).deserialize(base_url)
            except ValidationError as error:
                raise ValidationError(f"{BASE_URL_ENV} is not an http(s) URL", "base_url") from error
        data["base_url"] = base_url.rstrip("/") if base_url else None
        # OPENAI_API_KEY goes where the SDK would send it (OpenAI, or OPENAI_BASE_URL), never
        # to a server named by our own base_url option: an OpenAI key set for the embedder
        # must not reach the Groq or Ollama server the generator talks to
        env_key = os.environ.get(API_KEY_ENV) if own_url is None or is_openai(own_url) else None
        # keys pasted from files often end with a newline, which an HTTP header cannot carry
        data["api_key"] = (data.get("api_key") or env_key or "").strip() or None
        if data["api_key"] and not _PRINTABLE_ASCII.fullmatch(data["api_key"]):
            raise ValidationError("the API key must be printable ASCII without spaces (it goes into an "
                                  "HTTP header)", "api_key")
        if not data["api_key"] and is_openai(data["base_url"]):
            raise ValidationError(
                f"OpenAI's API needs a key: set the plugin option api_key (SPACIO_PLUGINS__<KIND>__OPENAI__API_KEY) "
                f"or {API_KEY_ENV}; for a server that needs none (Ollama, vLLM, ...) set base_url", "api_key")
        return data


def is_openai(base_url: str | None) -> bool:
    """Whether ``base_url`` (None: the SDK's default) is OpenAI's own API."""
    return base_url is None or (urlsplit(base_url).hostname or "").lower() == OPENAI_HOST


class Caller:
    """Owns the lazily created ``openai.OpenAI`` client and runs calls with retries.
    ``label`` names the plugin and model in every error message ("openai generator
    (model gpt-4.1-mini)"); the base URL and the key are never in one (messages reach API
    clients; the URL may name internal hosts)."""

    def __init__(self, *, label: str, api_key: str | None, base_url: str | None, timeout: float,
                 connect_timeout: float, max_retries: int, backoff: float, max_sleep: float = MAX_SLEEP,
                 sleep: Callable[[float], None] = time.sleep):
        self.label = label
        self._api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        #: the longest wait before a retry; a longer Retry-After goes to the host instead
        self.max_sleep = max_sleep
        self._sleep = sleep
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"Caller({self.label!r})"

    @property
    def client(self) -> openai.OpenAI:
        """Created on first use: constructing it builds an HTTP client and an SSL context."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = openai.OpenAI(
                        api_key=self._api_key or NO_KEY,
                        # resolved by the options (ours, else OPENAI_BASE_URL); None is OpenAI's
                        base_url=self.base_url,
                        timeout=self.timeouts(),
                        # ours are the only retries: the SDK's would multiply our count, ignore
                        # our deadlines and sleep through long Retry-Afters
                        max_retries=0,
                    )
        return self._client

    def timeouts(self, read: float | None = None) -> httpx2.Timeout:
        """Connect within ``connect_timeout``; wait at most ``read`` (default ``timeout``)
        for any byte of the response, and ``timeout`` to write the request."""
        return httpx2.Timeout(self.timeout, connect=min(self.connect_timeout, self.timeout),
                              read=self.timeout if read is None else read)

    def close(self) -> None:
        """Close the HTTP client, if one was made (the host calls this when a worker exits)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # the contract: close() must not raise
                log.debug("closing the openai client failed", exc_info=True)

    def call(self, what: str, fn: Callable[[openai.OpenAI], T], *, deadline: float | None = None) -> T:
        """Run ``fn(client)``; retry what is worth retrying with exponential backoff (or the
        server's Retry-After), then raise ``UpstreamUnavailable``. ``fn`` may raise
        ``UpstreamUnavailable`` itself (a failure it read from a 200 response) to be retried
        too. No retry starts after ``deadline`` (a ``time.monotonic()`` value) would pass."""
        attempt = 0
        while True:
            try:
                return fn(self.client)
            except openai.APIError as exc:
                cause, error = exc, self.map_error(what, exc)
            except UpstreamUnavailable as exc:
                cause, error = exc.__cause__, exc
            if not isinstance(error, UpstreamUnavailable) or attempt >= self.max_retries:
                raise error from cause
            if error.retry_after is None:
                delay = self._backoff(attempt)
            elif error.retry_after <= self.max_sleep:
                delay = error.retry_after
            else:
                raise error from cause
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise error from cause
            attempt += 1
            log.info("%s %s failed (%s), retry %d/%d in %.2fs", self.label, what, error.message, attempt,
                     self.max_retries, delay)
            self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # exponential with +-25 % jitter, so workers throttled together do not retry together
        return min(self.backoff * 2 ** attempt * random.uniform(0.75, 1.25), self.max_sleep)

    def map_error(self, what: str, exc: openai.APIError) -> PluginError:
        """The contract's error for an SDK error. Never returns a bare library error."""
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamUnavailable(f"{self.label}: {what} timed out", reason="upstream_timeout")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            if isinstance(cause, (httpx2.LocalProtocolError, httpx2.UnsupportedProtocol, httpx2.InvalidURL)):
                # the request could not even be written (a bad base_url)
                return PluginError(f"{self.label}: invalid request setup for {what} ({type(cause).__name__}); "
                                   "check the base_url option", reason="upstream_error")
            return UpstreamUnavailable(f"{self.label}: cannot reach the API for {what} "
                                       f"({type(cause).__name__ if cause else 'connection error'})")
        if not isinstance(exc, openai.APIStatusError):
            # an error the server reported inside a 200 stream (``data: {"error": ...}``)
            return UpstreamUnavailable(f"{self.label}: the server reported an error during {what}: "
                                       f"{_detail(exc.body, exc.message, self._api_key)}", reason="upstream_error")
        status = exc.status_code
        code = exc.code or ""
        detail = _detail(exc.body, exc.message, self._api_key)
        if status == 401:
            # OpenAI's 401 message quotes part of the key: only its code is repeated here
            return PluginError(f"{self.label}: the server refused the API key for {what} (HTTP 401"
                               f"{', ' + code if code else ''}); check the api_key option or {API_KEY_ENV}",
                               reason="upstream_error")
        if status == 403:
            return PluginError(f"{self.label}: the API key may not use this model or endpoint for {what} "
                               f"(HTTP 403: {detail})", reason="upstream_error")
        if status == 404:
            return PluginError(f"{self.label}: not found for {what} (HTTP 404: {detail}); check the model "
                               "name and base_url", reason="upstream_error")
        if status == 429 and code == "insufficient_quota":
            # billing, not load: trying again in a minute will not help
            return PluginError(f"{self.label}: the account's quota is used up (HTTP 429: {detail})",
                               reason="upstream_error")
        if status in RETRYABLE or status >= 500:
            return UpstreamUnavailable(f"{self.label}: {what} is unavailable (HTTP {status}: {detail})",
                                       retry_after=retry_after(exc.response.headers))
        if status in (400, 413, 422):
            return InvalidInput(f"{self.label}: the server refused the {what} request (HTTP {status}: {detail})",
                                reason="upstream_rejected_input")
        return PluginError(f"{self.label}: {what} failed (HTTP {status}: {detail})", reason="upstream_error")


def mentions(exc: openai.APIStatusError, name: str) -> bool:
    """Whether a refused request's error names the request parameter ``name`` (OpenAI's
    ``param``; else anywhere in the body: Mistral's 422 lists it in ``detail[].loc``)."""
    return exc.param == name or name in str(exc.body)


def _detail(body: Any, fallback: str, api_key: str | None) -> str:
    """OpenAI's error bodies are ``{"error": {"message", "type", "param", "code"}}`` (the
    SDK passes the inner object); others vary. Short, and never with the key in it."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = body["message"]
    elif isinstance(body, dict) and body.get("message") is not None:
        text = str(body["message"])  # Mistral: {"message": {"detail": [...]}}
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        text = body["detail"]
    elif isinstance(body, str) and body.strip():
        text = body
    else:
        text = fallback
    text = " ".join(text.split())
    if api_key and api_key != NO_KEY:
        text = text.replace(api_key, "[key]")
    return text if len(text) <= 300 else text[:297] + "..."


def retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI's), else ``Retry-After``
    (delta-seconds or an HTTP date), if any."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
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


def get(obj: Any, *path: str) -> Any:
    """``obj.a.b.c`` for SDK models or dicts, None where anything on the way is missing. The
    SDK builds chunks without validation, so a field a server left out is simply absent."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj
