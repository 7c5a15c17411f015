"""The app's request class: a body is read within its limit, or refused with 413.

werkzeug enforces ``max_content_length`` on a body of unknown length (``Transfer-Encoding:
chunked``, which gunicorn terminates) by reading up to the limit and stopping there: the
first MiB of a larger JSON body was parsed as if it were the whole body, and answered 400
``invalid_json`` (or worse, a valid prefix). ``Request.stream`` checks that nothing follows
the limit, so such a body gets the same 413 as one that declares its length.

A chunked body whose framing is broken (a chunk size that is not hex, a missing CRLF) makes
the server's reader raise its own exception (gunicorn's are not ``OSError``, which werkzeug
expects): it escaped a rate-limit key, and the next read found an empty body, answered as
"missing fields". It is 400 ``malformed_body``, on every read.
"""

from flask import Request as FlaskRequest
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from spacio.jsonbody import InvalidJSON


def malformed_body():
    error = BadRequest()
    error.data = {"reason": "malformed_body",
                  "message": "The request body could not be read: its chunked transfer coding is broken."}
    return error


class CappedStream(LimitedStream):
    """A body of unknown length: at most ``limit`` bytes, 413 if there is more, 400 if the
    server cannot decode it."""

    def __init__(self, stream, limit):
        super().__init__(stream, limit, is_max=True)
        self._source = stream
        self._broken = False

    def _guarded(self, read, *args):
        if self._broken:
            raise malformed_body()
        try:
            return read(*args)
        except HTTPException:
            raise
        except Exception as error:  # noqa: BLE001 - the server's own error for a broken framing
            self._broken = True
            raise malformed_body() from error

    def readinto(self, b):
        return self._guarded(super().readinto, b)

    def readall(self):
        data = super().readall()  # stops at the limit, silently
        if self.is_exhausted and self._guarded(self._source.read, 1):
            raise RequestEntityTooLarge()
        return data


class Request(FlaskRequest):
    @cached_property
    def stream(self):
        limit = self.max_content_length
        if limit is not None and self.content_length is None and self.environ.get("wsgi.input_terminated"):
            return CappedStream(self.environ["wsgi.input"], limit)
        return super().stream

    def on_json_loading_failed(self, e):
        """``get_json()`` of a body ``spacio.jsonbody`` refuses: its 400 ``invalid_json``."""
        if isinstance(e, InvalidJSON):
            raise e
        return super().on_json_loading_failed(e)
