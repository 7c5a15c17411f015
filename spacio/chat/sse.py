"""A chat answer as Server-Sent Events (API.md "Asking"), in this order:

``start {conversation_id, message_id}``, ``citations [...]`` (always, possibly empty),
``delta {text}`` one or more, then ``end {message_id, grounded, usage}`` -- or, when the
generation fails after the stream started, ``error`` with the one error body, and the stream
ends. Each event is ``event: <type>\\ndata: <json>\\n\\n``, one event per chunk written, so a
proxy that does not buffer (``X-Accel-Buffering: no``) passes each piece on at once.

The body is a generator the WSGI server iterates after the request's context (and its
database session) is gone; it pushes an app context of its own for the generator plugin
and for the short transaction that stores the answer. A client that disconnects makes the
server close the generator (``GeneratorExit`` at the pending ``yield``): the generation is
closed, and the part written so far is stored as ``interrupted``.
"""

from __future__ import annotations

import json
import logging

from flask import Response

from spacio.chat import services
from spacio.errors import SpacioError, error_body

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wanted(request) -> bool:
    """The client asked for a stream: ``text/event-stream`` named in Accept (``*/*`` is JSON)."""
    return any(value == MEDIA_TYPE and quality > 0 for value, quality in request.accept_mimetypes)


def frame(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'), default=str)}\n\n" \
        .encode("utf-8")


def response(app, pending: services.Pending) -> Response:
    return Response(events(app, pending), status=200, mimetype=MEDIA_TYPE, headers=HEADERS)


def events(app, pending: services.Pending):
    with app.app_context():
        generation = services.Generation(pending.prepared)
        pieces = None
        try:
            yield frame("start", {"conversation_id": str(pending.conversation_id),
                                  "message_id": str(pending.message_id)})
            yield frame("citations", pending.offered())
            pieces = generation.pieces()
            for piece in pieces:
                yield frame("delta", {"text": piece})
        except GeneratorExit:  # the client left: stop generating, keep what was written
            if pieces is not None:
                pieces.close()
            _store(pending, generation, "interrupted")
            raise
        except SpacioError as exc:  # the generator failed mid-stream: 502/503
            log.warning("chat answer %s failed: %s (%s)", pending.message_id, exc.message, exc.reason)
            _store(pending, generation, "interrupted")
            yield frame("error", error_body(exc.code, exc.reason, exc.message, exc.errors))
            return
        except Exception:
            log.exception("chat answer %s failed", pending.message_id)
            _store(pending, generation, "interrupted")
            yield frame("error", error_body(500))
            return
        try:
            services.finish_chat(pending, generation, "complete")
        except Exception:
            log.exception("storing chat answer %s failed", pending.message_id)
            yield frame("error", error_body(503, "service_unavailable", "The answer could not be saved."))
            return
        yield frame("end", {"message_id": str(pending.message_id), "grounded": pending.grounded,
                            "usage": services.usage_dict(generation.usage, pending.embedding_tokens)})


def _store(pending, generation, status):
    """Store a stopped answer; a failure to do so is logged, never raised over the stream's own end."""
    try:
        services.finish_chat(pending, generation, status)
    except Exception:
        log.exception("storing interrupted chat answer %s failed", pending.message_id)
