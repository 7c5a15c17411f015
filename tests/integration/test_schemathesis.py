"""Property-based fuzzing of every operation in the OpenAPI spec, in-process, with real auth.

Every generated request must get a documented status with a body and headers that match
the spec: no 5xx, no response that violates the spec. Path parameters are sometimes
replaced by ids that exist (the caller's space, a member, an invite, a document), so the
fuzzer gets past the 404 of a random UUID and into the handlers. Every check schemathesis has
runs (the CLI's ``--checks all``).

As in the live test (``test_schemathesis_live.py``), the operations that end the caller's
session or account run as throwaway users, and deleting the real space or document deletes a
throwaway one instead: the real token and ids stay valid for every case, so every operation is
fuzzed past authentication instead of seeing only 401 after the first logout.
"""

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import ApiClient
from tests.integration import test_schemathesis_live as live  # SESSION_ENDERS, excluded_checks

REAL_IDS = {}
CLIENT = {}  # the test client of the app under test, for throwaway users and spaces
CASES = {}  # backend -> requests made, printed in the terminal summary
# Where a new password is set, a schema-valid password can still be too easy to guess
# (zxcvbn): 422 `weak_password` is the right answer there, not a spec violation.
PASSWORD_SETTERS = {"/api/v1/auth/register", "/api/v1/auth/password", "/api/v1/auth/password-reset/confirm"}


@pytest.fixture
def api_schema(make_app, database):
    app = make_app(RATELIMIT_ENABLED=False)
    REAL_IDS["backend"] = database.split(":", 1)[0].split("+", 1)[0]
    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com", "Alice")
    CLIENT.update(client=client, owner=alice, throwaways=0)
    bob = client.user("bob@example.com", "Bob")
    space = client.space(alice)
    client.member(alice, space["id"], bob, "viewer")
    invite = client.post(f"/api/v1/spaces/{space['id']}/invites", json={"emails": ["carol@example.com"]},
                         headers=alice.headers).json[0]
    REAL_IDS.update(space_id=space["id"], user_id=bob.id, invite_id=invite["id"],
                    document_id=upload(client, alice, space["id"], "notes.md"), headers=alice.headers)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    schema.config.checks.update(included_check_names=["all"])  # the CLI's --checks all
    # as in the live test: unknown query parameters are ignored by design
    schema.config.generation.update(allow_extra_parameters=False)
    return schema


def upload(client, user, space_id, filename):
    """Upload one Markdown file; returns its document's id."""
    response = client.upload(user, space_id, (f"# {filename}\n\nSome words about {filename}.\n".encode(), filename))
    assert response.status_code == 202, response.json
    return response.json["documents"][0]["id"]


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    real = {k: v for k, v in REAL_IDS.items() if k in (path_parameters or {})}
    if not real:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, **real}])


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_its_spec(case):
    CASES[REAL_IDS["backend"]] = CASES.get(REAL_IDS["backend"], 0) + 1
    client, headers = CLIENT["client"], REAL_IDS["headers"]
    operation = (case.operation.method.upper(), case.operation.path)
    if operation in live.SESSION_ENDERS:
        CLIENT["throwaways"] += 1
        headers = client.user(f"throwaway-{CLIENT['throwaways']}@example.com", "Throwaway").headers
    elif operation == ("DELETE", "/api/v1/spaces/{space_id}") and \
            case.path_parameters.get("space_id") == REAL_IDS["space_id"]:
        case.path_parameters["space_id"] = client.space(CLIENT["owner"], "Throwaway")["id"]
    elif operation == ("DELETE", "/api/v1/spaces/{space_id}/documents/{document_id}") and \
            case.path_parameters.get("document_id") == REAL_IDS["document_id"]:
        case.path_parameters["document_id"] = upload(client, CLIENT["owner"], REAL_IDS["space_id"],
                                                     f"throwaway-{case.id}.md")
    case.call_and_validate(headers=headers, excluded_checks=live.excluded_checks(case))
