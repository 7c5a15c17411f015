"""Calling Gemini: one ``google.genai.Client`` per plugin on an HTTP client of ours, our
retries (the SDK's are off), deadlines that bound every socket wait of a streamed answer,
and every SDK or transport error mapped to the contract's errors. Shared by both plugins."""

from __future__ import annotations

import contextvars
import email.utils
import json
import logging
import os
import random
import re
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import httpcore
import httpx
import pydantic
from google import genai
from google.genai import errors, types
from marshmallow import Schema, ValidationError, fields, post_load, validate

from spacio.rag.contracts import InvalidInput, PluginError, UpstreamUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the SDK's own variables, in the SDK's order of precedence
API_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
#: the Gemini Developer API version every request goes to. Pinned: SDK 3.x defaults to
#: ``v1``, older ones to ``v1beta``, and ``GOOGLE_GENAI_API_VERSION`` would change it too.
API_VERSION = "v1beta"
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: statuses worth another try: request timeout, conflict (ABORTED), rate limits, cancelled, server errors
RETRYABLE = {408, 409, 429, 499}
#: a retry delay longer than this is not slept through: the error goes to the host, whose
#: queue retries later with ``retry_after`` as the hint, instead of holding a worker
MAX_SLEEP = 60.0
#: the longest wait for a TCP/TLS connection, whatever ``timeout`` says
CONNECT_TIMEOUT = 10.0


class GeminiOptions(Schema):
    """Options common to both Gemini plugins. ``api_key`` falls back to the SDK's
    ``GOOGLE_API_KEY`` then ``GEMINI_API_KEY``; a missing key is a configuration error,
    reported when the options are loaded (at startup), not at the first request."""

    api_key = fields.String(load_default=None, validate=validate.Length(min=1))
    base_url = fields.Url(load_default=None, schemes={"http", "https"}, require_tld=False)
    timeout = fields.Float(load_default=60.0, validate=validate.Range(min=0, min_inclusive=False))
    max_retries = fields.Integer(load_default=4, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=1.0, validate=validate.Range(min=0))

    @post_load
    def _api_key_from_environment(self, data: dict, **kwargs: Any) -> dict:
        key = data.get("api_key") or next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), "")
        # keys pasted from files often end with a newline, which httpx refuses in a header
        data["api_key"] = key.strip() or None
        if data["api_key"] and not _PRINTABLE_ASCII.fullmatch(data["api_key"]):
            raise ValidationError("the Gemini API key must be printable ASCII without spaces "
                                  "(it goes into an HTTP header)", "api_key")
        if not data["api_key"]:
            raise ValidationError(
                "a Gemini API key is required: set the plugin option api_key "
                "(SPACIO_PLUGINS__<KIND>__GEMINI__API_KEY) or the environment variable GEMINI_API_KEY "
                "(or GOOGLE_API_KEY)", "api_key")
        return data


# --------------------------------------------------------------------------- HTTP

@dataclass
class Call:
    """One logical call (an embed request with its retries, a streamed answer): the
    monotonic deadline no socket wait may pass, and the HTTP responses it opened, so they
    can be closed when the caller stops. It is made current with :func:`current` around
    each synchronous step that may touch the network; the HTTP layer below finds it there
    (a context variable: per thread and per greenlet, so interleaved streams of one
    instance never see each other's)."""

    deadline: float | None = None
    responses: list[httpx.Response] = field(default_factory=list)

    def close(self) -> None:
        for response in self.responses:
            try:
                response.close()
            except Exception:  # closing a broken connection must not hide why it broke
                log.debug("closing a Gemini response failed", exc_info=True)
        self.responses.clear()


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("spacio_gemini_call", default=None)


@contextmanager
def current(call: Call) -> Iterator[Call]:
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def _bounded(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of the current call's deadline."""
    call = _CURRENT.get()
    if call is None or call.deadline is None:
        return timeout
    left = max(call.deadline - time.monotonic(), 0.001)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every wait ends by the current call's deadline. httpcore takes one
    read timeout per response, so a first-token or whole-answer limit could otherwise only
    be checked between chunks, after a wait of up to ``timeout``."""

    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_tcp(host, port, _bounded(timeout), local_address,
                                                         socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _HttpClient(httpx.Client):
    """The SDK's HTTP client: our timeouts on every request (the SDK sends one float, or
    ``None`` for none at all), and every response recorded on the current :class:`Call`."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        request.extensions["timeout"] = self.timeout.as_dict()
        response = super().send(request, **kwargs)
        call = _CURRENT.get()
        if call is not None:
            call.responses.append(response)
        return response


def _http_client(timeout: float, ssl_context: ssl.SSLContext) -> httpx.Client:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=30)
    transport = httpx.HTTPTransport(verify=ssl_context, limits=limits)
    # The same pool httpx builds, on a network backend that honours call deadlines. httpx
    # exposes no parameter for it; ``_pool`` is what its transport sends through (httpx 0.28).
    if isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        transport._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend())
    else:  # a future httpx: waits are then bounded by ``timeout`` and deadlines checked between chunks
        log.warning("httpx's transport changed: Gemini stream deadlines are checked between chunks only")
    return _HttpClient(transport=transport, timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
                       follow_redirects=False)


# --------------------------------------------------------------------------- the caller

class GeminiCaller:
    """Owns the lazily created ``genai.Client`` (and its HTTP client), runs calls with
    retries and maps errors. ``label`` names the plugin and model in error messages
    ("gemini embedder (model gemini-embedding-001)"); never the key."""

    def __init__(self, *, label: str, api_key: str, base_url: str | None, timeout: float, max_retries: int,
                 backoff: float, max_sleep: float = MAX_SLEEP, server_timeout: float | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.label = label
        self.api_key = api_key
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        #: the longest wait before a retry; a longer delay goes to the host instead.
        #: The generator passes less: a person is waiting.
        self.max_sleep = max_sleep
        #: sent as ``X-Server-Timeout`` so Google stops work nobody waits for any more
        self.server_timeout = server_timeout or timeout
        self._sleep = sleep
        self._client: genai.Client | None = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> genai.Client:
        """Created on first use (~45 ms: an SSL context), never at construction."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    # one SSL context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR) for all the
                    # clients the SDK builds: each costs ~35 ms of certificate loading, and the
                    # first request of a gevent worker waits for them
                    ssl_context = httpx.create_ssl_context()
                    self._http = _http_client(self.timeout, ssl_context)
                    self._client = genai.Client(
                        api_key=self.api_key,
                        # explicit: GOOGLE_GENAI_USE_VERTEXAI in the environment must not turn
                        # this into a Vertex AI client that looks for Google Cloud credentials
                        vertexai=False,
                        http_options=types.HttpOptions(
                            # None: GOOGLE_GEMINI_BASE_URL, else Google's URL
                            base_url=self.base_url,
                            api_version=API_VERSION,
                            timeout=int(self.server_timeout * 1000),
                            httpx_client=self._http,
                            # never used (the plugins are synchronous), but built by the SDK
                            # unless given, each with an SSL context of its own
                            httpx_async_client=httpx.AsyncClient(verify=ssl_context),
                            async_client_args={"ssl": ssl_context},
                            # no retry_options: the SDK then tries once; ours are the only
                            # retries, with our backoff and the first-token deadline
                        ),
                    )
        return self._client

    def close(self) -> None:
        """Close the HTTP client (its pooled connections). Never raises."""
        with self._lock:
            client, self._client = self._http, None
            self._http = None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the Gemini HTTP client failed", exc_info=True)

    def call(self, what: str, fn: Callable[[genai.Client], T]) -> T:
        """Run ``fn(client)``; retry what is worth retrying with exponential backoff (or the
        server's retry delay), then raise ``UpstreamUnavailable``. ``what`` names the
        operation in messages ("embed"). ``fn`` may itself raise ``UpstreamUnavailable``
        (a failure it read from a 200 response) to be retried too."""
        attempt = 0
        while True:
            call = Call()
            try:
                with current(call):
                    return fn(self.client)
            except Exception as exc:
                error = self.error(what, exc)
            finally:
                call.close()
            delay = self.retry_delay(error, attempt)
            if delay is None:
                raise error from error.__cause__
            attempt += 1
            log.info("gemini %s failed (%s), retry %d/%d in %.2fs", what, error.message, attempt,
                     self.max_retries, delay)
            self._sleep(delay)

    def retry_delay(self, error: PluginError, attempt: int, deadline: float | None = None) -> float | None:
        """Seconds to wait before retry ``attempt + 1`` after ``error``, or None when it is
        not retried: not retryable, no retries left, a server delay over ``max_sleep``, or
        no time before ``deadline`` (monotonic) to wait and then try."""
        if not isinstance(error, UpstreamUnavailable) or attempt >= self.max_retries:
            return None
        if error.retry_after is None:
            delay = min(self.backoff * 2 ** attempt * random.uniform(0.75, 1.25), self.max_sleep)
        elif error.retry_after <= self.max_sleep:
            delay = error.retry_after
        else:
            return None
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def error(self, what: str, exc: BaseException) -> PluginError:
        """The contract's error for anything a call raised (``exc`` becomes its cause)."""
        if isinstance(exc, PluginError):
            error = exc
        else:
            error = map_error(self.label, what, exc)
            if error is None:
                raise exc
            error.__cause__ = exc
        return error


def map_error(label: str, what: str, exc: BaseException) -> PluginError | None:
    """The contract's error for an SDK, transport or response error; None for anything
    else (a bug of ours, which must not be disguised as the service's failure)."""
    if isinstance(exc, errors.APIError):
        return _api_error(label, what, exc)
    if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        # the request could not even be written (a control character in a header, a bad URL)
        return PluginError(f"{label}: invalid request setup for {what} ({type(exc).__name__}: {exc}); "
                           "check the api_key and base_url options", reason="upstream_error")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamUnavailable(f"{label}: {what} timed out ({type(exc).__name__})", reason="upstream_timeout")
    if isinstance(exc, httpx.TransportError):
        return UpstreamUnavailable(f"{label}: cannot reach the Gemini API for {what} ({type(exc).__name__}: {exc})")
    if isinstance(exc, (errors.UnknownApiResponseError, json.JSONDecodeError)):
        # a stream event or body that is not JSON: malformed SSE, a stream cut mid-line, a proxy's page
        return UpstreamUnavailable(f"{label}: {what} returned a response that is not JSON ({_short(str(exc))})",
                                   reason="upstream_bad_response")
    if isinstance(exc, (pydantic.ValidationError, TypeError, AttributeError, KeyError)):
        # JSON, but not Gemini's (a misconfigured proxy): the SDK's models refused it.
        # Logged with its traceback in case it is a bug of ours instead.
        log.warning("gemini %s: unreadable response", what, exc_info=exc)
        return UpstreamUnavailable(f"{label}: {what} returned a response that could not be read "
                                   f"({type(exc).__name__}: {_short(str(exc))})", reason="upstream_bad_response")
    return None


def _api_error(label: str, what: str, exc: errors.APIError) -> PluginError:
    status = exc.code or 0
    body = exc.details.get("error", exc.details) if isinstance(exc.details, dict) else {}
    details = body.get("details") if isinstance(body, dict) and isinstance(body.get("details"), list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict) and d.get("reason")}
    state = exc.status or ""
    detail = f"HTTP {status}{' ' + state if state else ''}: {_short(exc.message or str(exc.details))}"
    key_help = "check the api_key option or GEMINI_API_KEY / GOOGLE_API_KEY"
    if 200 <= status < 300:
        return UpstreamUnavailable(f"{label}: {what} returned a response that could not be read ({detail})",
                                   reason="upstream_bad_response")
    if status in (401, 403) or reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"} \
            or (status == 400 and "api key" in (exc.message or "").lower()):
        return PluginError(f"{label}: Gemini rejected the API key ({detail}); {key_help}", reason="upstream_error")
    if status == 404:
        return PluginError(f"{label}: the model or URL was not found ({detail}); check the model and base_url "
                           "options", reason="upstream_error")
    if status == 400:
        return InvalidInput(f"{label}: Gemini refused the {what} request ({detail})", reason="upstream_rejected_input")
    if status in RETRYABLE or status >= 500:
        return UpstreamUnavailable(f"{label}: {what} is unavailable ({detail})",
                                   retry_after=_retry_after(exc, details))
    return PluginError(f"{label}: {what} failed ({detail})", reason="upstream_error")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _retry_after(exc: errors.APIError, details: list) -> float | None:
    """Seconds the server asked to wait: ``google.rpc.RetryInfo.retryDelay`` ("47s",
    "0.5s") in the error's details, else a ``Retry-After`` header (seconds or HTTP date)."""
    for item in details:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
