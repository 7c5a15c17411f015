"""Observability in the production shape: a real `dramatiq tasks` worker logs with the
uploading request's id; two gunicorn gevent workers give one coherent /metrics; gunicorn's
access log shows no query string or Referer."""

import io
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ApiClient, redis_url
from tests.integration.workers import Web, Worker, flush_redis, wait_for, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def json_lines(lines):
    found = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            found.append(json.loads(line[start:]))
        except ValueError:
            continue
    return found


def test_the_workers_log_lines_for_a_document_carry_the_uploads_request_id(make_app, tmp_path):
    flush_redis()
    client = ApiClient(make_app(REDIS_URL=redis_url()).test_client())
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    worker = Worker(worker_env(tmp_path, EMBEDDER="hashing", LOG_FORMAT="json")).wait_ready()
    try:
        text = "\n\n".join(f"Paragraph {i} of a traced upload." * 5 for i in range(20)).encode()
        response = client.post(f"/api/v1/spaces/{space_id}/documents",
                               headers={**owner.headers, "X-Request-ID": "upload-trace-7"},
                               data={"files": [(io.BytesIO(text), "traced.txt")]})
        assert response.status_code == 202, response.json
        assert response.headers["X-Request-ID"] == "upload-trace-7"
        document_id = response.json["documents"][0]["id"]

        def ready():
            got = client.get(f"/api/v1/spaces/{space_id}/documents/{document_id}", headers=owner.headers).json
            return got["status"] == "ready"

        wait_for(ready, 60, what="the document to be ready")
        wait_for(lambda: any(document_id in line for line in worker.lines), 10, what="the worker's log line")
    finally:
        worker.kill()
    lines = json_lines(worker.lines)
    mine = [line for line in lines if document_id in line.get("message", "")]
    assert mine, worker.output()
    assert all(line["request_id"] == "upload-trace-7" for line in mine), mine
    assert any(line["message"].startswith("ingested document") for line in mine), mine
    # the worker's other lines (start-up) have no request id: the id is per message, not per process
    assert any(line["request_id"] is None for line in lines), worker.output()


def counts(exposition, route):
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == "spacio_http_request_duration_seconds_count" and s.labels.get("route") == route:
                total += s.value
    return total


def test_two_gunicorn_workers_give_one_coherent_exposition(database, tmp_path, unused_port):
    flush_redis()
    metrics_dir = tmp_path / "prometheus"
    env = {**worker_env(tmp_path, LOG_FORMAT="json"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "GUNICORN_ACCESSLOG": "-"}
    web = Web(env, unused_port, workers=2)
    try:
        web.wait_up()
        secret = uuid.uuid4().hex

        def call(_):
            return web.get(f"/api/v1/plugins?token={secret}",
                           headers={"Referer": f"http://frontend.example/join?token={secret}",
                                    "X-Request-ID": "gunicorn-trace"})[0]

        def pids():
            return {name.rsplit("_", 1)[-1] for name in os.listdir(metrics_dir) if name.endswith(".db")}

        sent = 0
        with ThreadPoolExecutor(16) as pool:  # concurrent connections until both workers took some
            while sent < 2000 and (sent < 40 or len(pids()) < 2):
                assert set(pool.map(call, range(40))) == {401}
                sent += 40
        status, body = web.get("/ready")  # its checks run on greenlets under gevent
        assert status == 200, body
        assert json.loads(body)["checks"] == {"database": "ok", "redis": "ok", "vector_store": "ok"}
        served_by = pids()
        scrapes = [web.get("/metrics") for _ in range(8)]
    finally:
        web.stop()
    assert len(served_by) == 2, served_by  # both workers served and wrote samples
    for status, body in scrapes:
        assert status == 200, body
        assert counts(body, "/api/v1/plugins") == sent, body  # every scrape, whichever worker: all of them
    output = web.output()
    assert secret not in output, output  # neither the query string nor the Referer is logged
    access = [line for line in json_lines(web.lines) if line.get("logger") == "spacio.access"
              and line.get("route") == "/api/v1/plugins"]
    assert len(access) == sent and {line["request_id"] for line in access} == {"gunicorn-trace"}
    gunicorn_access = [line["message"] for line in json_lines(web.lines) if line.get("logger") == "gunicorn.access"]
    assert any('"GET /api/v1/plugins HTTP/1.1" 401' in line for line in gunicorn_access), output  # path only
    assert web.process.returncode == 0, output
