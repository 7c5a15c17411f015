"""``CohereGenerator``: Cohere chat (API v2) through ``cohere.ClientV2.chat_stream``,
streamed token by token. The messages are Spacio's own (``spacio.rag.prompts``): the
citation rules in the system message, the passages fenced off as data in the user message."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Iterator

import cohere
import httpx
from marshmallow import fields, validate

from spacio.rag import prompts
from spacio.rag.contracts import InvalidInput, Prompt, UpstreamUnavailable, Usage

from ._calls import CohereCaller, CohereOptions

log = logging.getLogger(__name__)

DEFAULT_MODEL = "command-a-03-2025"
#: the longest Retry-After slept through before the first token; a person is waiting
INTERACTIVE_MAX_SLEEP = 10.0
#: finish reasons with which the API reports, inside a 200 stream, that generation failed
FAILED = {"ERROR": "upstream_error", "TIMEOUT": "upstream_timeout"}


class CohereGeneratorOptions(CohereOptions):
    """``model`` is any Cohere chat model id. ``max_tokens`` caps answers whose prompt sets
    no limit (None: the model's own maximum). Retries happen only before the first token,
    so fewer of them by default than for ingestion: a person is waiting."""

    model = fields.String(load_default=DEFAULT_MODEL, validate=validate.Length(min=1))
    max_tokens = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    max_retries = fields.Integer(load_default=2, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=0.5, validate=validate.Range(min=0))


class CohereGenerator:
    """Streams each ``content-delta`` text as it arrives, then one ``Usage`` with the
    tokens Cohere billed (``usage.billed_units``; ``usage.tokens`` if a proxy drops the
    billed units; ``spacio.rag.prompts``' estimate if both are missing).

    Errors: 429, 5xx, timeouts and dropped connections before the first piece are retried
    with backoff, then raise ``UpstreamUnavailable``; a bad key raises ``PluginError``
    (``upstream_auth``), a refused request ``InvalidInput``. Once a piece was yielded
    nothing is retried (text cannot be taken back): a stream that breaks off, or ends with
    ``finish_reason`` ERROR or TIMEOUT, raises ``UpstreamUnavailable`` after the pieces
    already yielded. Closing the iterator closes the HTTP stream. No I/O before the first
    ``next()``."""

    options_schema = CohereGeneratorOptions

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        self.max_tokens: int | None = opts["max_tokens"]
        self._caller = CohereCaller(api_key=opts["api_key"], base_url=opts["base_url"], timeout=opts["timeout"],
                                    max_retries=opts["max_retries"], backoff=opts["backoff"],
                                    max_sleep=INTERACTIVE_MAX_SLEEP)

    def __repr__(self) -> str:  # never show the key
        return f"CohereGenerator(model={self.model!r})"

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The keyword arguments of ``chat_stream`` for ``prompt``."""
        if not prompt.question.strip():
            raise InvalidInput("the question is empty", reason="empty_question")
        request: dict[str, Any] = {"model": self.model, "messages": prompts.messages(prompt)}
        if prompt.temperature is not None:
            request["temperature"] = prompt.temperature
        max_tokens = prompt.max_tokens or self.max_tokens
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        return request

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]:
        request = self.request(prompt)
        # Everything up to the first piece of text may be retried: nothing was shown yet.
        events, head = self._caller.call("chat", lambda client: _open(client, request))
        pieces: list[str] = []
        end = None
        try:
            for event in itertools.chain(head, events):
                kind = _get(event, "type")
                if kind == "content-delta":
                    text = _get(event, "delta", "message", "content", "text")
                    if isinstance(text, str) and text:
                        pieces.append(text)
                        yield text
                elif kind == "message-end":
                    end = _get(event, "delta")
                # message-start, content-start/end, citation and tool events carry no answer text;
                # reading on after message-end lets the connection go back to the pool
        except httpx.TransportError as exc:  # a dropped connection, a read timeout, a broken SSE body
            raise UpstreamUnavailable(f"the Cohere chat stream broke off after {len(pieces)} pieces "
                                      f"({type(exc).__name__}: {exc})", reason="upstream_interrupted") from exc
        finally:
            events.close()  # on GeneratorExit too: closes the HTTP response
        if end is None:
            raise UpstreamUnavailable(f"the Cohere chat stream ended after {len(pieces)} pieces without "
                                      "message-end", reason="upstream_interrupted")
        finish_reason = _get(end, "finish_reason")
        if finish_reason in FAILED:
            raise UpstreamUnavailable(f"Cohere chat stopped with {finish_reason} after {len(pieces)} pieces: "
                                      f"{_get(end, 'error') or 'no details'}", reason=FAILED[finish_reason])
        yield _usage(_get(end, "usage"), prompt, pieces)


def _usage(usage: Any, prompt: Prompt, pieces: list[str]) -> Usage:
    """The API's counts: billed units, else the model's token counts, else Spacio's estimate."""
    for counts in (_get(usage, "billed_units"), _get(usage, "tokens")):
        prompt_tokens, completion_tokens = _count(counts, "input_tokens"), _count(counts, "output_tokens")
        if prompt_tokens is not None and completion_tokens is not None:
            return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    log.warning("Cohere chat reported no token usage; using Spacio's estimate")
    return Usage(prompt_tokens=prompts.prompt_tokens(prompt),
                 completion_tokens=prompts.estimate_tokens("".join(pieces)))


def _open(client: cohere.ClientV2, request: dict[str, Any]) -> tuple[Iterator[Any], list[Any]]:
    """Send the request and read events up to the first piece of text (or the end): the
    open event iterator and the events read. Failing here is still worth a retry; a stream
    that ended in ERROR or TIMEOUT before any text is retried too."""
    events = client.chat_stream(**request)
    head: list[Any] = []
    try:
        for event in events:
            head.append(event)
            kind = _get(event, "type")
            if kind == "content-delta" and _get(event, "delta", "message", "content", "text"):
                break
            if kind == "message-end":
                finish_reason = _get(event, "delta", "finish_reason")
                if finish_reason in FAILED:
                    raise UpstreamUnavailable(f"Cohere chat stopped with {finish_reason} before any text: "
                                              f"{_get(event, 'delta', 'error') or 'no details'}",
                                              reason=FAILED[finish_reason])
                break
        else:
            raise UpstreamUnavailable("the Cohere chat stream ended before any text and without message-end",
                                      reason="upstream_interrupted")
    except BaseException:
        events.close()
        raise
    return events, head


def _get(obj: Any, *path: str) -> Any:
    """``obj.a.b.c`` for SDK models or dicts (the SDK passes events of unknown types on as
    dicts), None where anything on the way is missing."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


def _count(counts: Any, name: str) -> int | None:
    value = _get(counts, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return int(value)
    return None
