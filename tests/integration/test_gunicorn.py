"""The Procfile's web command, gunicorn with gevent workers, on PostgreSQL + pgvector + Redis."""

import json
import re
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.integration.workers import Web, flush_redis, wait_for, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def test_a_worker_that_used_pgvector_shuts_down_without_a_traceback(database, tmp_path, unused_port):
    """SIGTERM after a search: the worker closes the store's connection pool while its
    gevent hub still runs (gunicorn.conf.py worker_exit); left to the garbage collector,
    psycopg_pool printed "Exception ignored ... Traceback" on every shutdown."""
    flush_redis()
    web = Web(worker_env(tmp_path), unused_port)
    try:
        web.wait_up()
        email = f"shutdown-{uuid.uuid4().hex[:8]}@example.com"
        assert web.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD, "name": "S"})[0] == 201
        status, tokens = web.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
        assert status == 200, tokens
        token = tokens["access_token"]
        status, space = web.call("POST", "/api/v1/spaces", {"name": "shutdown"}, token)
        assert status == 201, space
        status, found = web.call("POST", f"/api/v1/spaces/{space['id']}/search", {"query": "anything at all"}, token)
        assert status == 200, found  # the pgvector pool is open now
    finally:
        web.stop()
    output = web.output()
    assert web.process.returncode == 0, output
    assert "Worker exiting" in output, output
    assert "Traceback" not in output and "Exception ignored" not in output, output


def test_two_refreshes_at_once_on_two_workers_get_one_pair(database, tmp_path, unused_port):
    """Two tabs refreshing with one refresh token at the same moment, on two gevent workers:
    exactly one rotation happens (a compare-and-swap on the session row) and both requests
    answer 200 with the same pair; the session lives on. Before the grace window, the loser
    got 401 and often revoked the session."""
    flush_redis()
    web = Web(worker_env(tmp_path), unused_port, workers=2)
    try:
        web.wait_up()
        email = f"tabs-{uuid.uuid4().hex[:8]}@example.com"
        assert web.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD, "name": "T"})[0] == 201
        status, tokens = web.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
        assert status == 200, tokens
        start = threading.Barrier(2)

        def tab(token):
            start.wait()
            return web.call("POST", "/api/v1/auth/refresh", token=token)

        with ThreadPoolExecutor(2) as pool:
            for _ in range(25):
                answers = list(pool.map(tab, [tokens["refresh_token"]] * 2))
                assert [status for status, _ in answers] == [200, 200], answers
                assert answers[0][1] == answers[1][1], answers  # the same pair, not two
                tokens = answers[0][1]
        assert web.call("GET", "/api/v1/auth/me", token=tokens["access_token"])[0] == 200
        status, rotated = web.call("POST", "/api/v1/auth/refresh", token=tokens["refresh_token"])
        assert status == 200, rotated
    finally:
        web.stop()
    output = web.output()
    assert web.process.returncode == 0, output
    assert "Traceback" not in output, output


# --------------------------------------------------------------------------- requests gunicorn refuses

@pytest.fixture(scope="module")
def web(database, tmp_path_factory):
    """One gunicorn for the raw requests below (none of them changes any state)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flush_redis()
    web = Web(worker_env(tmp_path_factory.mktemp("instance")), port)
    try:
        web.wait_up()
        yield web
    finally:
        web.stop()


def raw(web, request):
    """Send ``request`` as bytes on a fresh connection; (status, headers, body bytes) of the answer."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer, "no answer:\n" + web.output()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _length(answer):
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30  # read to the end


def request(line=b"GET /health HTTP/1.1", headers=()):
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in (b"Host: localhost", *headers)) + b"\r\n"


# gunicorn.conf.py's limits (README: GUNICORN_LIMIT_REQUEST_LINE, _FIELDS, _FIELD_SIZE)
LINE, FIELDS, FIELD_SIZE = 4094, 100, 8190


def line_of(size):
    """A GET /health request line of ``size`` bytes (without its CRLF)."""
    return b"GET /health?q=" + b"a" * (size - len(b"GET /health?q= HTTP/1.1")) + b" HTTP/1.1"


def field_of(size):
    """A header field of ``size`` bytes with its CRLF, as gunicorn counts it."""
    return b"X-Big: " + b"a" * (size - len(b"X-Big: \r\n"))


def fields(count, *first):
    """``count`` header fields with Host (added by ``request``)."""
    return [*first, *(b"X-N%d: 1" % i for i in range(count - 1 - len(first)))]


REFUSED = {
    "uri too long": (request(line_of(LINE + 1)), 414, "uri_too_long"),
    "too many headers": (request(headers=fields(FIELDS + 1)), 431, "headers_too_large"),
    "header too large": (request(headers=[field_of(FIELD_SIZE + 1)]), 431, "headers_too_large"),
    "garbage request line": (b"\x16\x03\x01 garbage\r\n\r\n", 400, "bad_request"),
    "no path": (request(b"GET HTTP/1.1"), 400, "bad_request"),
    "invalid method": (request(b"G(T / HTTP/1.1"), 400, "bad_request"),
    "invalid http version": (request(b"GET /health HTTP/9.x"), 400, "bad_request"),
    "invalid header name": (request(headers=[b"Bad Header: x"]), 400, "bad_request"),
    "invalid header value": (request(headers=[b"X-Bad: a\x00b"]), 400, "bad_request"),
    "unsupported transfer coding": (request(b"POST /api/v1/auth/login HTTP/1.1", [b"Transfer-Encoding: br"]),
                                    501, "unsupported_transfer_coding"),
    "unknown expectation": (request(b"POST /api/v1/auth/login HTTP/1.1", [b"Expect: 200-ok", b"Content-Length: 2"]),
                            417, "expectation_failed"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_request_gunicorn_refuses_answers_the_one_error_body(web, case):
    """Errors raised before the app sees the request (gunicorn's parser and limits) answer the
    app's one JSON error body too, with a fresh X-Request-ID that gunicorn's log line names;
    gunicorn's own answer was an HTML page."""
    data, code, reason = REFUSED[case]
    status, headers, body = raw(web, data)
    assert status == code, body
    assert headers["content-type"] == "application/json", (headers, body)
    error = json.loads(body)
    assert set(error) == {"code", "status", "message", "reason", "errors"}, error
    assert (error["code"], error["status"], error["reason"], error["errors"]) == (
        code, HTTPStatus(code).phrase, reason, {}), error
    assert error["message"] and "<" not in error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers
    wait_for(lambda: headers["x-request-id"] in web.output(), 10, what="the log line naming the request id")


def test_a_request_at_gunicorns_limits_reaches_the_app(web):
    """One byte or field more than the above: the app answers (and keeps the client's X-Request-ID)."""
    at = request(line_of(LINE), fields(FIELDS, b"X-Request-ID: at-the-limits", field_of(FIELD_SIZE)))
    status, headers, body = raw(web, at)
    assert status == 200, body
    assert json.loads(body) == {"status": "ok"}
    assert headers["x-request-id"] == "at-the-limits"


CHUNKED_LOGIN = request(b"POST /api/v1/auth/login HTTP/1.1", [b"Content-Type: application/json",
                                                               b"Transfer-Encoding: chunked", b"Connection: close"])
LOGIN_BODY = b'{"email": "nobody@example.com", "password": "not-the-Password-42"}'


@pytest.mark.parametrize("framing", [
    b"zz\r\n" + LOGIN_BODY + b"\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"%x\r\n" % len(LOGIN_BODY) + LOGIN_BODY + b"XX0\r\n\r\n",  # a chunk without its CRLF
], ids=["chunk size", "chunk terminator"])
def test_a_broken_chunked_body_is_400_malformed_body(web, framing):
    """gunicorn raises its own exception for a broken chunked framing while the app reads the
    body: it escaped the login limit's key function, and the next read found no body at all
    (422 "missing data"), or the chunk read before the break."""
    status, headers, body = raw(web, CHUNKED_LOGIN + framing)
    assert status == 400, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["reason"] == "malformed_body", body
    # the same body, framed right, reaches the login
    status, _, body = raw(web, CHUNKED_LOGIN + b"%x\r\n" % len(LOGIN_BODY) + LOGIN_BODY + b"\r\n0\r\n\r\n")
    assert (status, json.loads(body)["reason"]) == (401, "invalid_credentials"), body
