"""Operations: /ready (API.md), /metrics, JSON logs with the request id, no secret in a log line."""

import json
import logging
import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spacio import create_app
from tests.conftest import FAST_PIPELINE, STRONG_PASSWORD, TEST_SECRET, assert_error, redis_url, token_in

pytestmark = pytest.mark.usefixtures("empty_log_handlers_check")


@pytest.fixture
def empty_log_handlers_check():
    yield
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_spacio", False)]
    assert len(ours) <= 1, ours  # one handler per process, however many apps were built


# ---------------------------------------------------------------- /ready


def test_ready_checks_the_database_and_the_vector_store(client):
    response = client.get("/ready")
    assert response.status_code == 200, response.json
    assert response.json == {"status": "ready", "checks": {"database": "ok", "vector_store": "ok"}}


def test_ready_checks_redis_when_it_is_configured(make_app):
    client = make_app(REDIS_URL=redis_url()).test_client()
    response = client.get("/ready")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "redis": "ok", "vector_store": "ok"}


def test_ready_names_redis_when_it_is_down(make_app, unused_port):
    make_app()  # the fixture empties the tables with its first app: a working one
    client = make_app(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0").test_client()
    started = time.perf_counter()
    response = client.get("/ready")
    body = assert_error(response, 503, "not_ready")
    assert set(body["errors"]) == {"redis"}, body
    assert "redis" in body["message"]
    assert time.perf_counter() - started < 2.0


def test_ready_gives_up_on_a_check_that_hangs(make_app):
    """A Redis that accepts the connection and never answers: /ready answers 503 after
    READY_TIMEOUT_S instead of hanging."""
    make_app()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever reads or writes
        port = silent.getsockname()[1]
        client = make_app(REDIS_URL=f"redis://127.0.0.1:{port}/0", READY_TIMEOUT_S=0.5).test_client()
        started = time.perf_counter()
        response = client.get("/ready")
        elapsed = time.perf_counter() - started
    body = assert_error(response, 503, "not_ready")
    assert set(body["errors"]) == {"redis"}, body
    assert elapsed < 1.5, elapsed


def test_ready_names_the_database_and_the_vector_store_when_postgres_is_down(instance_path, unused_port):
    down = f"postgresql://spacio@127.0.0.1:{unused_port}/spacio"
    client = create_app({"TESTING": True, "JWT_SECRET_KEY": TEST_SECRET, **FAST_PIPELINE,
                         "SQLALCHEMY_DATABASE_URI": down}, INSTANCE_PATH=instance_path).test_client()
    response = client.get("/ready")
    body = assert_error(response, 503, "not_ready")
    assert set(body["errors"]) == {"database", "vector_store"}, body
    assert str(unused_port) not in json.dumps(body)  # details go to the log, not to the public


def test_the_registry_asks_the_vector_store_only_if_it_can_answer(app):
    from spacio.rag import registry

    plugins = registry(app)
    calls = []

    class Store:
        def ready(self, timeout):
            calls.append(timeout)

    original = plugins.vector_store
    try:
        plugins.vector_store = object()  # a store without ready(): counts as ready
        plugins.ready(1.0)
        plugins.vector_store = Store()
        plugins.ready(1.5)
    finally:
        plugins.vector_store = original
    assert calls == [1.5]


# ---------------------------------------------------------------- /metrics


def scrape(client, **headers):
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_by_route_template(client, alice, space):
    route = "/api/v1/spaces/<uuid:space_id>"
    before = scrape(client)
    for _ in range(3):
        assert client.get(f"/api/v1/spaces/{space['id']}?page=1", headers=alice.headers).status_code == 200
    assert client.get("/api/v1/spaces/not-a-uuid", headers=alice.headers).status_code == 404
    after = scrape(client)
    count = "spacio_http_request_duration_seconds_count"
    assert sample(after, count, method="GET", route=route, status="200") - \
        sample(before, count, method="GET", route=route, status="200") == 3
    assert sample(after, count, method="GET", route="<unmatched>", status="404") >= 1
    assert not any(space["id"] in str(labels) for _, labels in after)  # templates, never raw paths
    client.open(f"/api/v1/spaces/{space['id']}", method="BREW", headers=alice.headers)
    methods = {dict(labels).get("method") for name, labels in scrape(client) if name == count}
    assert "BREW" not in methods and "other" in methods  # an invented method cannot add series
    le = sample(after, "spacio_http_request_duration_seconds_bucket", method="GET", route=route, status="200",
                le="+Inf")
    assert le == sample(after, count, method="GET", route=route, status="200")


def test_metrics_report_ingestion_from_the_database(client, alice, space):
    text = "\n\n".join(f"Paragraph {i} about metrics and the number {i * 37}." * 5 for i in range(30)).encode()
    before = scrape(client)
    upload = client.upload(alice, space["id"], (text, "notes.txt"), (b"%PDF-1.4 broken", "broken.pdf"))
    assert upload.status_code == 202, upload.json
    client.ingested()
    after = scrape(client)
    assert sample(after, "spacio_metrics_database_up") == 1
    assert sample(after, "spacio_documents", status="ready") - sample(before, "spacio_documents", status="ready") == 1
    assert sample(after, "spacio_ingest_failures", reason="corrupt_file") == 1
    assert sample(after, "spacio_ingest_duration_seconds_count") == 1
    assert 0 < sample(after, "spacio_ingest_duration_seconds_sum") < 60
    assert sample(after, "spacio_ingest_duration_seconds_bucket", le="+Inf") == 1
    assert sample(after, "spacio_ingest_embedding_tokens") > 0
    assert sample(after, "spacio_ingest_queue_depth") == 0


def test_metrics_count_tokens_spent_by_requests(client, alice, space):
    client.document(alice, space["id"], b"Tokens are counted for every search request." * 4, "t.txt")
    before = scrape(client)
    response = client.post(f"/api/v1/spaces/{space['id']}/search", json={"query": "tokens counted"},
                           headers=alice.headers)
    assert response.status_code == 200, response.json
    after = scrape(client)
    assert sample(after, "spacio_tokens_total", type="embedding") > sample(before, "spacio_tokens_total",
                                                                            type="embedding")


def test_metrics_show_the_broker_queue_when_redis_is_configured(make_app):
    client = make_app(REDIS_URL=redis_url()).test_client()
    samples = scrape(client)
    assert ("spacio_broker_queue_messages", (("queue", "ingest"), ("state", "waiting"))) in samples


def test_metrics_need_the_token_when_one_is_set(make_app):
    client = make_app(METRICS_TOKEN="scrape-" + "s" * 30).test_client()
    assert_error(client.get("/metrics"), 401, "unauthorized")
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert_error(client.get("/metrics", headers={"Authorization": "scrape-" + "s" * 30}), 401, "unauthorized")
    assert scrape(client, Authorization="Bearer scrape-" + "s" * 30)


# ---------------------------------------------------------------- logs


def json_lines(err):
    lines = []
    for line in err.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_log_lines_are_json_with_the_request_id(make_app, capsys):
    client = make_app(LOG_FORMAT="json", LOG_LEVEL="INFO").test_client()
    make_app(LOG_FORMAT="json")  # a second app: still one line per record
    capsys.readouterr()
    response = client.post("/api/v1/auth/register", headers={"X-Request-ID": "trace-42"},
                           json={"email": "log@example.com", "password": STRONG_PASSWORD, "name": "Log"})
    assert response.status_code == 201
    assert client.get("/api/v1/spaces?page=2&token=hunter2").status_code == 401
    lines = json_lines(capsys.readouterr().err)
    access = [line for line in lines if line["logger"] == "spacio.access"]
    assert len(access) == 2, lines
    first, second = access
    assert first["request_id"] == "trace-42"
    assert (first["method"], first["route"], first["status"]) == ("POST", "/api/v1/auth/register", 201)
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert set(first) >= {"ts", "level", "logger", "message", "request_id"}
    assert re.fullmatch(r"[0-9a-f]{32}", second["request_id"])  # generated
    assert second["route"] == "/api/v1/spaces" and "hunter2" not in json.dumps(lines)
    assert response.headers["X-Request-ID"] == "trace-42"


def test_a_log_line_inside_a_request_carries_its_id_and_an_exception_its_text(make_app, capsys):
    app = make_app(LOG_FORMAT="json")
    with app.test_request_context("/"):
        from flask import g

        g.request_id = "inside-1"
        logging.getLogger("spacio.test").warning("a warning")
        try:
            raise ValueError("broken thing")
        except ValueError:
            logging.getLogger("spacio.test").exception("it failed")
    lines = [line for line in json_lines(capsys.readouterr().err) if line["logger"] == "spacio.test"]
    assert [line["request_id"] for line in lines] == ["inside-1", "inside-1"]
    assert lines[0]["level"] == "WARNING" and "exc" not in lines[0]
    assert "ValueError: broken thing" in lines[1]["exc"]


def test_the_inprocess_workers_lines_carry_the_uploads_request_id(client, alice, space, caplog):
    import io

    with caplog.at_level(logging.INFO, logger="spacio"):
        response = client.post(f"/api/v1/spaces/{space['id']}/documents",
                               headers={**alice.headers, "X-Request-ID": "inprocess-3"},
                               data={"files": [(io.BytesIO(b"Some words to ingest here. " * 20), "a.txt")]})
        assert response.status_code == 202, response.json
        client.ingested()
        assert client.get("/api/v1/spaces", headers=alice.headers).status_code == 200
    document_id = response.json["documents"][0]["id"]
    ingested = [r for r in caplog.records if r.name == "spacio.rag.pipeline" and document_id in r.getMessage()]
    assert ingested and all(r.request_id == "inprocess-3" for r in ingested), ingested
    later = [r for r in caplog.records if r.name == "spacio.access"][-1]
    assert later.request_id != "inprocess-3"  # the worker thread's id does not leak into later requests


def test_a_retried_messages_lines_carry_the_request_id(make_app, unused_port, caplog):
    """Dramatiq's own Retries line for a message, not only ours, has the upload's id."""
    from tests.conftest import ApiClient

    make_app()
    client = ApiClient(make_app(
        VECTOR_STORE="weaviate", INGEST_MAX_RETRIES=1, INGEST_MIN_BACKOFF_MS=10, INGEST_MAX_BACKOFF_MS=20,
        PLUGINS={"VECTOR_STORE": {"WEAVIATE": {"URL": f"http://127.0.0.1:{unused_port}",
                                                "GRPC_PORT": unused_port + 1 if unused_port < 65535 else 1}}},
    ).test_client())
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    with caplog.at_level(logging.INFO):
        import io

        response = client.post(f"/api/v1/spaces/{space_id}/documents",
                               headers={**owner.headers, "X-Request-ID": "retry-5"},
                               data={"files": [(io.BytesIO(b"Plain words to index."), "a.txt")]})
        assert response.status_code == 202, response.json
        client.ingested()
    retried = [r for r in caplog.records if r.name.startswith("dramatiq") and "Retrying" in r.getMessage()]
    assert retried and all(r.request_id == "retry-5" for r in retried), [(r.name, r.getMessage()) for r in retried]
    failed = [r for r in caplog.records if r.name == "spacio.rag.pipeline" and "failed" in r.getMessage()]
    assert failed and all(r.request_id == "retry-5" for r in failed)


def test_text_format(make_app, capsys):
    client = make_app(LOG_FORMAT="text").test_client()
    capsys.readouterr()
    client.get("/api/v1/spaces", headers={"X-Request-ID": "text-7"})
    err = capsys.readouterr().err
    assert re.search(r"INFO \[spacio\.access\] \[text-7\] GET /api/v1/spaces 401 [0-9.]+ ms", err), err


def test_a_bad_log_format_stops_the_app(make_app):
    with pytest.raises(RuntimeError, match="LOG_FORMAT"):
        make_app(LOG_FORMAT="xml")


# ---------------------------------------------------------------- no secret in any log line


def test_no_secret_or_token_reaches_a_log_line(make_app, caplog, capsys):
    """A whole flow at DEBUG, every record captured (caplog) and every formatted line
    (our handler's JSON on stderr): no password, JWT, refresh token, reset or invite token
    or API key appears."""
    from tests.conftest import ApiClient

    client = ApiClient(make_app(LOG_FORMAT="json", LOG_LEVEL="DEBUG").test_client())
    capsys.readouterr()
    secrets = []
    with caplog.at_level(logging.DEBUG):
        owner = client.user("owner@example.com", password=STRONG_PASSWORD)
        secrets += [STRONG_PASSWORD, owner.tokens["access_token"], owner.tokens["refresh_token"]]
        refreshed = client.post("/api/v1/auth/refresh", headers=owner.refresh_headers)
        assert refreshed.status_code == 200, refreshed.json
        secrets.append(refreshed.json["access_token"])
        secrets += [v for k, v in refreshed.json.items() if k.endswith("token") and isinstance(v, str)]

        assert client.post("/api/v1/auth/password-reset", json={"email": owner.email}).status_code in (200, 202, 204)
        reset = token_in(client.outbox(owner.email)[1], "reset")
        new_password = "another-Quiet-Harbour-19"
        secrets += [reset, new_password]
        confirmed = client.post("/api/v1/auth/password-reset/confirm",
                                json={"token": reset, "new_password": new_password})
        assert confirmed.status_code in (200, 204), confirmed.json
        owner = client.user("owner2@example.com", password=new_password)
        secrets += [owner.tokens["access_token"], owner.tokens["refresh_token"]]

        space = client.space(owner)
        guest = client.user("guest@example.com")
        secrets += [guest.tokens["access_token"], guest.tokens["refresh_token"]]
        invite = client.invite(owner, space["id"], guest.email)
        secrets.append(invite)
        accepted = client.post("/api/v1/invites/accept", json={"token": invite}, headers=guest.headers)
        assert accepted.status_code == 200, accepted.json
        assert client.post("/api/v1/invites/accept", json={"token": invite + "x"},
                           headers=guest.headers).status_code >= 400

        created = client.post("/api/v1/api-keys", json={"name": "ci", "space_id": space["id"], "role": "viewer"},
                              headers=owner.headers)
        assert created.status_code == 201, created.json
        key = created.json["key"]
        assert key.startswith("spk_")
        secrets.append(key)
        assert client.get(f"/api/v1/spaces/{space['id']}", headers={"X-API-Key": key}).status_code == 200
        client.get(f"/api/v1/spaces/{space['id']}", headers={"X-API-Key": key + "wrong"})
        client.get("/api/v1/spaces", headers={"Authorization": "Bearer " + owner.tokens["access_token"] + "x"})
        assert client.post("/api/v1/auth/login", json={"email": owner.email, "password": "Wrong-" + new_password}
                           ).status_code == 401
        secrets.append("Wrong-" + new_password)
    records = caplog.records
    assert any(r.name == "spacio.access" for r in records)  # the capture saw the requests
    assert any("mail to" in r.getMessage() for r in records)  # and the mail log lines
    texts = [caplog.text, capsys.readouterr().err]
    texts += [r.getMessage() + repr(r.args) + repr(vars(r)) for r in records]
    everything = "\n".join(texts)
    for secret in secrets:
        assert len(secret) >= 8
        assert secret not in everything, f"a secret reached the log: {secret[:6]}…"
    # the JWTs' signatures: a log line showing a decoded or re-encoded token would still show it
    for secret in secrets:
        if secret.count(".") == 2:
            assert secret.rsplit(".", 1)[1] not in everything
