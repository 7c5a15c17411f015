"""Oversized uploads against the Procfile's web command (gunicorn, one gevent worker):
refused with 413 in the one error body, without the worker reading a body past its limits
into memory. The bodies come from a raw socket, the way a hostile client sends them."""

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.integration.workers import Web, flush_redis, wait_for, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)

MIB = 1024 * 1024
MAX_CONTENT = 32 * MIB  # SPACIO_MAX_CONTENT_LENGTH of the server under test
MAX_FILE = 1 * MIB  # SPACIO_UPLOAD_MAX_FILE_BYTES
BOUNDARY = b"hostile-boundary"


def worker_pid(master_pid):
    """The pid of gunicorn's (only) worker process."""
    def child():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                    return int(entry.name)
        return None

    return wait_for(child, 30, what="the gunicorn worker")


def reset_peak(pid):
    """Start the process's peak RSS (VmHWM) again from its current RSS (Linux clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory_kib(pid):
    """(current RSS, peak RSS) of a process, KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class RawUpload:
    """One HTTP/1.1 upload on a raw socket: the body is sent by a thread (as much of it as
    the server takes) while the response is awaited."""

    content_type = f"multipart/form-data; boundary={BOUNDARY.decode()}"

    def __init__(self, port, path, token, total, content_length=True, chunk=MIB):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.total = total
        self.sent = 0
        self.chunk = chunk
        self.chunked = not content_length
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
                f"Content-Type: {self.content_type}", "Connection: close"]
        head.append(f"Content-Length: {total}" if content_length else "Transfer-Encoding: chunked")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _body(self):
        prefix = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; filename="huge.txt"\r\n'
                  b"Content-Type: text/plain\r\n\r\n")
        suffix = b"\r\n--" + BOUNDARY + b"--\r\n"
        filler = b"All work and no play makes a very large upload.\n" * (self.chunk // 49 + 1)
        yield prefix
        left = self.total - len(prefix) - len(suffix)
        while left > 0:
            piece = filler[:min(self.chunk, left)]
            left -= len(piece)
            yield piece
        yield suffix

    def _send(self):
        try:
            for piece in self._body():
                if self.chunked:
                    piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                self.sock.sendall(piece)
                self.sent += len(piece)
            if self.chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: it stopped reading
            pass

    def response(self):
        """(status, headers, JSON body) once the server has answered."""
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            assert more, data
            data += more
        sent_when_answered = self.sent
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            more = self.sock.recv(65536)
            if not more:
                break
            body += more
        self.sock.close()
        self.thread.join(30)
        return status, headers, json.loads(body[:length]), sent_when_answered


class RawJSON(RawUpload):
    """A JSON object of ``total`` bytes (one long string field) on a raw socket."""

    content_type = "application/json"

    def _body(self):
        prefix, suffix = b'{"name": "', b'"}'
        yield prefix
        left = self.total - len(prefix) - len(suffix)
        while left > 0:
            piece = b"x" * min(self.chunk, left)
            left -= len(piece)
            yield piece
        yield suffix


def assert_one_error_body(status, headers, body, code, reason):
    assert status == code, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert set(body) == {"code", "status", "message", "reason", "errors"}, body
    assert body["code"] == code and body["reason"] == reason and body["message"]


@pytest.fixture
def web(database, tmp_path, unused_port):
    flush_redis()
    server = Web(worker_env(tmp_path, MAX_CONTENT_LENGTH=MAX_CONTENT, UPLOAD_MAX_FILE_BYTES=MAX_FILE), unused_port)
    try:
        server.wait_up()
        email = f"uploads-{uuid.uuid4().hex[:8]}@example.com"
        assert server.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD,
                                                             "name": "U"})[0] == 201
        status, tokens = server.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
        assert status == 200, tokens
        server.token = tokens["access_token"]
        status, space = server.call("POST", "/api/v1/spaces", {"name": "uploads"}, server.token)
        assert status == 201, space
        server.documents = f"/api/v1/spaces/{space['id']}/documents"
        server.worker = worker_pid(server.process.pid)
        yield server
    finally:
        server.stop()


def small_upload_works(web):
    upload = RawUpload(web.port, web.documents, web.token, 64 * 1024)
    status, _, body, _ = upload.response()
    assert status == 202, body
    return body


def test_a_declared_oversize_body_is_refused_before_it_is_read(web):
    small_upload_works(web)  # warm: imports, pools, the first request's allocations
    reset_peak(web.worker)
    before = memory_kib(web.worker)

    started = time.monotonic()
    upload = RawUpload(web.port, web.documents, web.token, 8 * MAX_CONTENT, chunk=256 * 1024)
    status, headers, body, sent = upload.response()

    assert_one_error_body(status, headers, body, 413, "payload_too_large")
    assert sent < MAX_CONTENT, sent  # answered long before the body could have been read
    after = memory_kib(web.worker)
    print(f"\n  declared {8 * MAX_CONTENT >> 20} MiB: answered after {sent >> 20} MiB sent, "
          f"{time.monotonic() - started:.2f} s, worker RSS {before[0] >> 10} MiB, "
          f"peak during the upload {after[1] >> 10} MiB")
    assert after[1] - before[0] < 16 * 1024


def test_a_chunked_body_is_cut_off_at_the_content_limit(web):
    """No Content-Length: the worker reads until MAX_CONTENT_LENGTH and answers 413."""
    small_upload_works(web)
    reset_peak(web.worker)
    before = memory_kib(web.worker)

    started = time.monotonic()
    upload = RawUpload(web.port, web.documents, web.token, 8 * MAX_CONTENT, content_length=False, chunk=256 * 1024)
    status, headers, body, sent = upload.response()

    assert_one_error_body(status, headers, body, 413, "payload_too_large")
    assert sent < 2 * MAX_CONTENT, sent  # it stopped reading near the limit, not at the end
    after = memory_kib(web.worker)
    print(f"\n  chunked {8 * MAX_CONTENT >> 20} MiB: answered after {sent >> 20} MiB sent, "
          f"{time.monotonic() - started:.2f} s, worker RSS {before[0] >> 10} MiB, "
          f"peak during the upload {after[1] >> 10} MiB")
    assert after[1] - before[0] < 16 * 1024  # not the 32 MiB it read, nor the 256 sent


def test_a_file_over_the_per_file_limit_streams_through_without_being_kept(web):
    """A body under MAX_CONTENT_LENGTH with one file 30 times UPLOAD_MAX_FILE_BYTES: read to
    the end (other files could follow), hashed, dropped as it arrives; 413 file_too_large."""
    small_upload_works(web)
    reset_peak(web.worker)
    before = memory_kib(web.worker)
    total = MAX_CONTENT - MIB

    started = time.monotonic()
    upload = RawUpload(web.port, web.documents, web.token, total)
    status, headers, body, sent = upload.response()

    assert_one_error_body(status, headers, body, 413, "file_too_large")
    (entry,) = body["errors"]["files"]
    assert entry["reason"] == "file_too_large" and entry["filename"] == "huge.txt"
    after = memory_kib(web.worker)
    print(f"\n  {total >> 20} MiB file against a {MAX_FILE >> 20} MiB limit: {time.monotonic() - started:.2f} s, "
          f"worker RSS {before[0] >> 10} MiB, peak during the upload {after[1] >> 10} MiB")
    assert after[1] - before[0] < 16 * 1024
    assert os.path.exists(f"/proc/{web.worker}")  # the same worker, not a restarted one
    small_upload_works(web)


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "chunked"])
def test_a_json_body_over_its_limit_is_413_however_it_is_sent(web, content_length):
    """SPACIO_JSON_MAX_BYTES (1 MiB): a chunked body over it was cut at the limit and its
    first MiB parsed (400 invalid_json); it is 413 like one that declares its length."""
    upload = RawJSON(web.port, "/api/v1/spaces", web.token, 2 * MIB, content_length=content_length, chunk=64 * 1024)
    status, headers, body, _ = upload.response()
    assert_one_error_body(status, headers, body, 413, "payload_too_large")
    # at the limit it is read whole: the schema judges the name (too long), not the JSON
    upload = RawJSON(web.port, "/api/v1/spaces", web.token, MIB, content_length=content_length, chunk=64 * 1024)
    status, headers, body, _ = upload.response()
    assert_one_error_body(status, headers, body, 422, "validation_error")
    assert "name" in body["errors"], body
