"""Request bodies as JSON, with limits a client cannot push past.

Python's ``json`` module parses what it is given, however deep and however long its numbers:
an array nested 2,000 deep raises ``RecursionError``, an integer of more than 4,300 digits a
``ValueError`` of the int conversion limit, and neither is a ``JSONDecodeError``, so both
escaped the parsers as a 500. Every request body is read by ``loads`` here (webargs' parser
for the routes, ``request.get_json()`` for rate-limit keys), which answers any body that is
not usable JSON with ``InvalidJSON``: a ``ValueError`` (``get_json(silent=True)`` returns None)
and a ``SpacioError`` (400 ``invalid_json`` with a message that says what is wrong).
"""

import json

from flask.json.provider import DefaultJSONProvider

from spacio.errors import SpacioError

# No Spacio body comes near these; a document's own JSON is parsed elsewhere.
MAX_DEPTH = 32
MAX_INT_DIGITS = 1000


class InvalidJSON(SpacioError, ValueError):
    code = 400
    reason = "invalid_json"
    message = "The request body is not valid JSON."


def _parse_int(text):
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise InvalidJSON(f"The request body has a number of more than {MAX_INT_DIGITS} digits.")
    return int(text)


def _depth_exceeded(value):
    """Whether ``value`` nests containers deeper than MAX_DEPTH (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False


def loads(data):
    """The JSON value of a request body (bytes or text); InvalidJSON if it is not one, nests
    deeper than MAX_DEPTH or holds an integer longer than MAX_INT_DIGITS."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidJSON("The request body is not UTF-8.") from None
    too_deep = InvalidJSON(f"The request body nests arrays or objects deeper than {MAX_DEPTH} levels.")
    try:
        value = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise too_deep from None
    except InvalidJSON:
        raise
    except ValueError as error:  # JSONDecodeError, and the int conversion limit as a backstop
        message = None
        if isinstance(error, json.JSONDecodeError):
            message = f"The request body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        raise InvalidJSON(message) from None
    if _depth_exceeded(value):
        raise too_deep
    return value


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading with ``loads`` (``request.get_json()``)."""

    def loads(self, s, **kwargs):
        return loads(s)

