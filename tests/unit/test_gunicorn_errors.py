"""gunicorn.conf.py's worker answers the errors gunicorn raises itself with the one error body.

The requests a client can send are tested against a real gunicorn
(tests/integration/test_gunicorn.py); these are the errors no request can cause: gunicorn's own
faults, which answer 500 and are logged with their traceback."""

import json
import logging
import runpy
import socket
import types
from pathlib import Path

import pytest
from gunicorn.http import errors as http_errors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def worker_class():
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))["JsonErrorsWorker"]


def answer(worker_class, exc, caplog):
    """What handle_error writes for ``exc``: (status line, headers, body)."""
    worker = types.SimpleNamespace(log=logging.getLogger("test.gunicorn"))
    server, client = socket.socketpair()
    with server, client, caplog.at_level(logging.INFO, "test.gunicorn"):
        worker_class.handle_error(worker, None, server, ("203.0.113.7", 4242), exc)
        server.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: client.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    return status_line, dict(line.split(": ", 1) for line in lines), json.loads(body)


@pytest.mark.parametrize("exc", [RuntimeError("a bug in gunicorn"), http_errors.ConfigurationProblem("x"),
                                 http_errors.InvalidResponseHeader("X-Bad")])
def test_gunicorns_own_faults_answer_500_and_log_the_traceback(worker_class, exc, caplog):
    status_line, headers, body = answer(worker_class, exc, caplog)
    assert status_line == "HTTP/1.1 500 Internal Server Error"
    assert headers["Content-Type"] == "application/json" and headers["Connection"] == "close"
    assert body == {"code": 500, "status": "Internal Server Error", "reason": "internal_error", "errors": {},
                    "message": "An unexpected error occurred. It has been logged."}
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info[1] is exc


def test_a_refused_request_is_a_warning_without_the_requests_text(worker_class, caplog):
    """gunicorn's exception text can quote the request line (an invite token in a query string)."""
    status_line, headers, body = answer(worker_class, http_errors.InvalidRequestLine("GET /join?token=secret"), caplog)
    assert status_line == "HTTP/1.1 400 Bad Request" and body["reason"] == "bad_request"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "secret" not in record.getMessage()
