"""Property-based fuzzing of every operation against a RUNNING server: the Procfile's web
command (gunicorn, gevent worker) on the test PostgreSQL + Redis, over real HTTP.

The operations come from the server's own ``/api/v1/openapi.json``. Users are registered and
logged in over HTTP; path parameters are sometimes replaced by ids that exist (a space, a
member, an invite, a document: the strategies of the in-process test, ``test_schemathesis.py``),
so the fuzzer gets past the 404 of a random UUID. Every check schemathesis has runs (the CLI's
``--checks all``): no 5xx; a documented status, Content-Type, body and headers; schema-violating
data refused and schema-valid data accepted (except where a rule the schema cannot express
applies, see ``excluded_checks``). Rate limiting stays on (raised for the fuzzing client, which
sends thousands of requests from one address and one user).

Unlike the in-process test, the real token stays valid for the whole run: operations that
end the caller's session run as throwaway users (see SESSION_ENDERS), and deleting the real
space or document deletes a throwaway one, so every operation is fuzzed past authentication.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from sqlalchemy import select

from spacio import create_app
from spacio.extensions import db
from spacio.mail import OutboxMessage
from tests.conftest import STRONG_PASSWORD, TEST_SECRET, empty_tables, postgres_url, token_in
from tests.integration import test_schemathesis as in_process  # its path-parameter hook and REAL_IDS
from tests.integration.workers import Web, flush_redis, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)

CASES = {}  # "live" -> requests made, printed in the terminal summary
RAISED = "1000000 per minute"
LIMITS = ("LOGIN", "REGISTER", "PASSWORD_RESET", "INVITE_ACCEPT", "INVITE", "ASK", "API", "UPLOAD")


def outbox_token(email, path):
    """The token in the newest mail to ``email`` (the server's embedded mail backend keeps
    sent mails in the outbox table)."""
    app = create_app(SQLALCHEMY_DATABASE_URI=postgres_url(), JWT_SECRET_KEY=TEST_SECRET)
    with app.app_context():
        body = db.session.scalars(select(OutboxMessage.body).where(OutboxMessage.to == email)
                                  .order_by(OutboxMessage.created_at.desc())).first()
        db.engine.dispose()
    assert body, f"no mail to {email}"
    return token_in(body, path)


@pytest.fixture
def live_server(database, tmp_path, unused_port):
    flush_redis()
    env = worker_env(tmp_path, EMBEDDER="hashing", ARGON2_TIME_COST=1, ARGON2_MEMORY_COST=1024,
                     ARGON2_PARALLELISM=1, **{f"{name}_RATE_LIMIT": RAISED for name in LIMITS})
    web = Web(env, unused_port)
    try:
        web.wait_up()
        yield web
    finally:
        web.stop()
        app = create_app(SQLALCHEMY_DATABASE_URI=postgres_url(), JWT_SECRET_KEY=TEST_SECRET)
        with app.app_context():
            empty_tables()
            db.engine.dispose()
        flush_redis()
    output = web.output()
    assert "Traceback" not in output, output[-5000:]


def upload(web, token, space_id, filename):
    """Upload one Markdown file; returns its document's id (no worker runs: it stays queued)."""
    response = requests.post(f"{web.root}/api/v1/spaces/{space_id}/documents", timeout=30,
                             headers={"Authorization": f"Bearer {token}"},
                             files={"files": (filename, f"# {filename}\n\nSome words about {filename}.\n".encode())})
    assert response.status_code == 202, response.text
    return response.json()["documents"][0]["id"]


def login(web, email, name):
    status, body = web.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD, "name": name})
    assert status == 201, body
    status, tokens = web.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
    assert status == 200, tokens
    return body["id"], tokens["access_token"]


@pytest.fixture
def api_schema(live_server):
    web = live_server
    _, alice = login(web, "alice@example.com", "Alice")
    bob_id, bob = login(web, "bob@example.com", "Bob")
    status, space = web.call("POST", "/api/v1/spaces", {"name": "Research"}, alice)
    assert status == 201, space
    status, sent = web.call("POST", f"/api/v1/spaces/{space['id']}/invites",
                            {"emails": ["bob@example.com"], "role": "viewer"}, alice)
    assert status == 201, sent
    status, joined = web.call("POST", "/api/v1/invites/accept", {"token": outbox_token("bob@example.com", "join")}, bob)
    assert status == 200, joined
    status, invites = web.call("POST", f"/api/v1/spaces/{space['id']}/invites", {"emails": ["carol@example.com"]}, alice)
    assert status == 201, invites
    in_process.REAL_IDS.update(backend="live", space_id=space["id"], user_id=bob_id, invite_id=invites[0]["id"],
                               document_id=upload(web, alice, space["id"], "notes.md"),
                               headers={"Authorization": f"Bearer {alice}"})
    schema = schemathesis.openapi.from_url(web.root + "/api/v1/openapi.json")
    schema.config.update(base_url=web.root)
    schema.config.checks.update(included_check_names=["all"])  # the CLI's --checks all
    # unknown query parameters are ignored by design (a cache-busting `?_=1` must not fail)
    schema.config.generation.update(allow_extra_parameters=False)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")

# Operations that end the caller's session (or account) run as a throwaway user, and deleting
# the real space deletes a throwaway space instead: the real token and ids must stay valid for
# every later case, or the rest of the run would only see 401 and 404.
UPLOAD = "/api/v1/spaces/{space_id}/documents"
SESSION_ENDERS = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/password"), ("DELETE", "/api/v1/auth/me")}
THROWAWAY = {"n": 0}


def throwaway_headers(web):
    THROWAWAY["n"] += 1
    _, token = login(web, f"throwaway-{THROWAWAY['n']}@example.com", "Throwaway")
    return {"Authorization": f"Bearer {token}"}


def crosses_chunk_rule(case):
    """Whether the body sets chunking settings the server may refuse for their combination."""
    settings = case.body.get("settings") if isinstance(case.body, dict) else None
    if not isinstance(settings, dict) or (case.operation.method.upper(), case.operation.path) not in {
            ("POST", "/api/v1/spaces"), ("PATCH", "/api/v1/spaces/{space_id}")}:
        return False
    size, overlap = settings.get("chunk_size"), settings.get("chunk_overlap")
    if case.operation.method.upper() == "PATCH":  # merged with what the space has
        return size is not None or overlap is not None
    return isinstance(size, int) and isinstance(overlap, int) and overlap >= size // 2


def chooses_a_generator(case):
    """Whether the body picks a space's generator: a schema-valid name may not be installed, or
    not configured on this server (422 generator_not_usable, what GET /plugins says)."""
    settings = case.body.get("settings") if isinstance(case.body, dict) else None
    return isinstance(settings, dict) and bool(settings.get("generator"))


def excluded_checks(case):
    """Checks that cannot hold for a case because of what this harness does to it."""
    excluded = []
    if case.operation.path in in_process.PASSWORD_SETTERS or case.operation.path == UPLOAD:
        # a schema-valid password may be too weak (422), a schema-valid file of an unsupported
        # type is refused (415): rules of the content the schema cannot express
        excluded.append(positive_data_acceptance)
    if crosses_chunk_rule(case) or chooses_a_generator(case):
        # chunk_overlap < chunk_size // 2 (of the space's settings after the change): a rule
        # across two fields, and for PATCH across stored state, that JSON Schema cannot state;
        # a generator must be installed and configured here: a rule of the server, not the schema
        excluded.append(positive_data_acceptance)
    negative = {location for location, info in case.meta.components.items()
                if info.mode == GenerationMode.NEGATIVE} if case.meta else set()
    if negative and negative <= {ParameterLocation.PATH, ParameterLocation.HEADER}:
        # the invalid part was an id or a header, and the harness replaced it with a real id
        # and the real Authorization header: the request sent was valid
        excluded.append(negative_data_rejection)
    return excluded


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_running_server_conforms_to_its_spec(case, live_server):
    CASES["live"] = CASES.get("live", 0) + 1
    headers = in_process.REAL_IDS["headers"]
    operation = (case.operation.method.upper(), case.operation.path)
    if operation in SESSION_ENDERS:
        headers = throwaway_headers(live_server)
    elif operation == ("DELETE", "/api/v1/spaces/{space_id}") and \
            case.path_parameters.get("space_id") == in_process.REAL_IDS["space_id"]:
        status, space = live_server.call("POST", "/api/v1/spaces", {"name": "Throwaway"},
                                         headers["Authorization"].split()[1])
        assert status == 201, space
        case.path_parameters["space_id"] = space["id"]
    elif operation == ("DELETE", "/api/v1/spaces/{space_id}/documents/{document_id}") and \
            case.path_parameters.get("document_id") == in_process.REAL_IDS["document_id"]:
        case.path_parameters["document_id"] = upload(live_server, headers["Authorization"].split()[1],
                                                     in_process.REAL_IDS["space_id"], f"throwaway-{case.id}.md")
    case.call_and_validate(headers=headers, excluded_checks=excluded_checks(case), timeout=30)
