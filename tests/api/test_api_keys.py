"""API keys (API.md "API keys"): one space, a role capped by the creator's, shown once,
stored hashed, listed with last use, revocable; X-API-Key works wherever a JWT does in
that space, and nowhere else."""

import hashlib
import io
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from spacio.apikeys.models import ApiKey
from spacio.db import utcnow
from spacio.extensions import db
from tests.api.helpers import assert_recent, space_url
from tests.conftest import assert_error

KEYS = "/api/v1/api-keys"


def create_key(client, user, space_id, role="viewer", name="CI"):
    return client.post(KEYS, json={"name": name, "space_id": space_id, "role": role}, headers=user.headers)


def new_key(client, user, space_id, role="viewer", name="CI"):
    response = create_key(client, user, space_id, role, name)
    assert response.status_code == 201, response.json
    return response.json


def with_key(key):
    return {"X-API-Key": key["key"]}


def stored(client, key_id):
    with client.app.app_context():
        return db.session.get(ApiKey, uuid.UUID(key_id))


@pytest.fixture
def team(client):
    """An owner with a space (and a second one), and an editor and a viewer of the first."""
    owner = client.user("owner@example.com", "Owner")
    editor = client.user("editor@example.com", "Editor")
    viewer = client.user("viewer@example.com", "Viewer")
    space = client.space(owner, "Keys")["id"]
    other = client.space(owner, "Other")["id"]
    client.member(owner, space, editor, "editor")
    client.member(owner, space, viewer, "viewer")
    return owner, editor, viewer, space, other


def test_create_shows_the_key_once_and_stores_only_its_hash(client, team):
    owner, _editor, _viewer, space, _other = team
    created = new_key(client, owner, space, "editor", "  Build server ")
    assert set(created) == {"id", "name", "space_id", "role", "key", "created_at", "last_used_at"}
    assert (created["name"], created["space_id"], created["role"]) == ("Build server", space, "editor")
    assert created["last_used_at"] is None
    assert_recent(created["created_at"])
    assert created["key"].startswith("spk_" + uuid.UUID(created["id"]).hex + "_")
    secret = created["key"][len("spk_") + 32 + 1:]
    assert len(secret) == 43  # 256 random bits

    row = stored(client, created["id"])
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert created["key"] not in repr(row.__dict__) and secret not in repr(row.__dict__)

    listed = client.get(KEYS, headers=owner.headers)
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json] == [created["id"]]
    assert "key" not in listed.json[0] and created["key"] not in listed.get_data(as_text=True)


def test_list_is_the_callers_own_keys_newest_first(client, team):
    owner, editor, _viewer, space, other = team
    first = new_key(client, owner, space, name="first")
    second = new_key(client, owner, other, "editor", name="second")
    new_key(client, editor, space, name="editor's")
    assert [k["id"] for k in client.get(KEYS, headers=owner.headers).json] == [second["id"], first["id"]]
    assert [k["name"] for k in client.get(KEYS, headers=editor.headers).json] == ["editor's"]


@pytest.mark.parametrize("member, role, status", [
    ("owner", "editor", 201), ("owner", "viewer", 201), ("editor", "editor", 201), ("editor", "viewer", 201),
    ("viewer", "viewer", 201), ("viewer", "editor", 403),
])
def test_a_key_has_at_most_the_creators_role(client, team, member, role, status):
    owner, editor, viewer, space, _other = team
    user = {"owner": owner, "editor": editor, "viewer": viewer}[member]
    response = create_key(client, user, space, role)
    if status == 403:
        assert_error(response, 403, "role_too_high")
        assert client.get(KEYS, headers=user.headers).json == []
    else:
        assert response.status_code == 201, response.json


@pytest.mark.parametrize("body, fields", [
    ({}, {"name", "space_id", "role"}),
    ({"name": "x", "space_id": "not-a-uuid", "role": "viewer"}, {"space_id"}),
    ({"name": "x", "space_id": "{space}", "role": "owner"}, {"role"}),
    ({"name": "", "space_id": "{space}", "role": "viewer"}, {"name"}),
    ({"name": "x" * 101, "space_id": "{space}", "role": "viewer"}, {"name"}),
])
def test_create_invalid_body_is_422(client, team, body, fields):
    owner, _editor, _viewer, space, _other = team
    body = {k: (space if v == "{space}" else v) for k, v in body.items()}
    response = client.post(KEYS, json=body, headers=owner.headers)
    assert set(assert_error(response, 422, "validation_error")["errors"]) == fields


def test_create_for_a_space_you_are_not_in_is_404(client, team):
    owner, _editor, _viewer, _space, _other = team
    stranger = client.user("stranger@example.com")
    own = client.space(stranger, "Stranger's")["id"]
    assert_error(create_key(client, owner, own), 404, "space_not_found")
    assert_error(create_key(client, owner, str(uuid.uuid4())), 404, "space_not_found")


def test_the_number_of_keys_is_capped(make_app):
    from tests.conftest import ApiClient

    client = ApiClient(make_app(API_KEYS_MAX_PER_USER=2).test_client())
    owner = client.user("owner@example.com")
    space = client.space(owner)["id"]
    first = new_key(client, owner, space)
    new_key(client, owner, space)
    assert_error(create_key(client, owner, space), 409, "too_many_api_keys")
    assert client.delete(f"{KEYS}/{first['id']}", headers=owner.headers).status_code == 204
    new_key(client, owner, space)


def test_a_key_acts_as_its_creator_in_its_space(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space, "editor")
    response = client.get(space_url(space), headers=with_key(key))
    assert response.status_code == 200, response.json
    assert response.json["role"] == "editor", "an owner's editor key is an editor"
    # an editor may upload and read documents
    upload = client.post(space_url(space, "documents"), headers=with_key(key),
                         data={"files": [(io.BytesIO(b"Keys upload files."), "k.txt")]})
    assert upload.status_code == 202, upload.json
    listed = client.get(space_url(space, "documents"), headers=with_key(key))
    assert [d["filename"] for d in listed.json] == ["k.txt"]
    # but not do an owner's things
    assert_error(client.patch(space_url(space), json={"name": "Renamed"}, headers=with_key(key)), 403)
    assert_error(client.delete(space_url(space), headers=with_key(key)), 403)
    # the space list through a key is the key's one space, with the key's role
    spaces = client.get("/api/v1/spaces", headers=with_key(key))
    assert spaces.status_code == 200
    assert [(s["id"], s["role"]) for s in spaces.json] == [(space, "editor")]


def test_a_viewer_key_cannot_write(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space, "viewer")
    assert client.get(space_url(space), headers=with_key(key)).json["role"] == "viewer"
    response = client.post(space_url(space, "documents"), headers=with_key(key),
                           data={"files": [(io.BytesIO(b"x"), "k.txt")]})
    assert_error(response, 403)


def test_when_the_creators_role_drops_the_keys_role_drops(client, team):
    owner, editor, _viewer, space, _other = team
    key = new_key(client, editor, space, "editor")
    assert client.get(space_url(space), headers=with_key(key)).json["role"] == "editor"
    response = client.patch(space_url(space, "members", editor.id), json={"role": "viewer"}, headers=owner.headers)
    assert response.status_code == 200, response.json
    assert client.get(space_url(space), headers=with_key(key)).json["role"] == "viewer"
    assert client.get("/api/v1/spaces", headers=with_key(key)).json[0]["role"] == "viewer"
    assert_error(client.post(space_url(space, "reindex"), headers=with_key(key)), 403)
    # removed from the space: the key sees no space at all
    assert client.delete(space_url(space, "members", editor.id), headers=owner.headers).status_code == 204
    assert_error(client.get(space_url(space), headers=with_key(key)), 404, "space_not_found")
    assert client.get("/api/v1/spaces", headers=with_key(key)).json == []


def test_a_key_of_one_space_finds_no_other(client, team):
    owner, _editor, _viewer, space, other = team
    key = new_key(client, owner, space, "editor")
    for path in (space_url(other), space_url(other, "documents"), space_url(other, "members"),
                 space_url(uuid.uuid4())):
        assert_error(client.get(path, headers=with_key(key)), 404, "space_not_found")
    assert_error(client.post(space_url(other, "search"), json={"query": "x"}, headers=with_key(key)),
                 404, "space_not_found")


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/auth/me"), ("PATCH", "/api/v1/auth/me"), ("DELETE", "/api/v1/auth/me"),
    ("POST", "/api/v1/auth/password"), ("POST", "/api/v1/auth/logout"), ("GET", KEYS), ("POST", KEYS),
    ("DELETE", KEYS + "/{key_id}"), ("POST", "/api/v1/spaces"), ("POST", "/api/v1/invites/accept"),
    ("GET", "/api/v1/usage"),
])
def test_account_endpoints_answer_403_to_a_key(client, team, method, path):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space, "editor")
    response = client.open(path.format(key_id=key["id"]), method=method, headers=with_key(key),
                           json={"name": "x", "space_id": space, "role": "viewer"})
    body = assert_error(response, 403, "api_key_not_allowed")
    assert "API key" in body["message"]
    # nothing happened: the account and its keys are as they were
    assert client.get("/api/v1/auth/me", headers=owner.headers).json["name"] == "Owner"
    assert [k["id"] for k in client.get(KEYS, headers=owner.headers).json] == [key["id"]]


def test_a_key_cannot_take_its_creator_out_of_the_space(client, team):
    _owner, _editor, viewer, space, _other = team
    key = new_key(client, viewer, space, "viewer")
    assert_error(client.delete(space_url(space, "members", viewer.id), headers=with_key(key)),
                 403, "api_key_not_allowed")
    assert client.get(space_url(space), headers=viewer.headers).status_code == 200


def test_revoked_key_is_401(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space)
    keep = new_key(client, owner, space, name="keep")
    assert client.get(space_url(space), headers=with_key(key)).status_code == 200
    assert client.delete(f"{KEYS}/{key['id']}", headers=owner.headers).status_code == 204
    response = client.get(space_url(space), headers=with_key(key))
    assert_error(response, 401, "api_key_invalid")
    assert response.headers["WWW-Authenticate"]
    assert client.get(space_url(space), headers=with_key(keep)).status_code == 200
    assert_error(client.delete(f"{KEYS}/{key['id']}", headers=owner.headers), 404, "api_key_not_found")


def test_only_the_creator_can_revoke_a_key(client, team):
    owner, editor, _viewer, space, _other = team
    key = new_key(client, owner, space)
    assert_error(client.delete(f"{KEYS}/{key['id']}", headers=editor.headers), 404, "api_key_not_found")
    assert_error(client.delete(f"{KEYS}/{uuid.uuid4()}", headers=owner.headers), 404, "api_key_not_found")
    assert client.get(space_url(space), headers=with_key(key)).status_code == 200


@pytest.mark.parametrize("forge", [
    lambda k: "", lambda k: "garbage", lambda k: "spk_", lambda k: k[:-1], lambda k: k + "A",
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # right id, wrong secret
    lambda k: "spk_" + uuid.uuid4().hex + k[36:],  # right secret, unknown id
    lambda k: k.upper(), lambda k: "Bearer " + k, lambda k: "spk_" + "x" * 5000,
    lambda k: k.replace("spk_", "spk_../"), lambda k: "spk_" + k[4:36] + "_" + "é" * 43,
], ids=["empty", "garbage", "prefix", "short", "long", "wrong-secret", "unknown-id", "upper", "bearer",
        "huge", "traversal", "unicode"])
def test_garbage_or_forged_key_is_401(client, team, forge):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space)
    forged = forge(key["key"])
    assert forged != key["key"]
    try:
        forged.encode("latin-1")
    except UnicodeEncodeError:
        forged = forged.encode().decode("latin-1")  # a header carries bytes
    response = client.get(space_url(space), headers={"X-API-Key": forged})
    assert_error(response, 401, "api_key_invalid")


def test_a_bad_key_on_an_account_endpoint_is_401_not_403(client, team):
    assert_error(client.get("/api/v1/auth/me", headers={"X-API-Key": "garbage"}), 401, "api_key_invalid")


def test_a_jwt_wins_over_a_key_sent_alongside(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space, "viewer")
    response = client.get(space_url(space), headers={**owner.headers, **with_key(key)})
    assert response.json["role"] == "owner"


def test_last_used_at_is_set_on_use_and_written_at_most_once_a_minute(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space)
    assert client.get(space_url(space), headers=with_key(key)).status_code == 200
    first = stored(client, key["id"]).last_used_at
    assert first is not None
    listed = client.get(KEYS, headers=owner.headers).json[0]
    assert_recent(listed["last_used_at"])

    assert client.get(space_url(space), headers=with_key(key)).status_code == 200
    assert stored(client, key["id"]).last_used_at == first, "not rewritten within the minute"

    with client.app.app_context():
        db.session.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(key["id"]))
                           .values(last_used_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()
    assert client.get(space_url(space), headers=with_key(key)).status_code == 200
    assert stored(client, key["id"]).last_used_at > first


def test_failed_attempts_do_not_touch_last_used_at(client, team):
    owner, _editor, _viewer, space, _other = team
    key = new_key(client, owner, space)
    wrong = key["key"][:-1] + ("0" if key["key"][-1] != "0" else "1")  # right id, wrong secret
    assert_error(client.get(space_url(space), headers={"X-API-Key": wrong}), 401, "api_key_invalid")
    assert stored(client, key["id"]).last_used_at is None


def test_deleting_the_space_or_the_user_deletes_their_keys(client, team):
    owner, editor, _viewer, space, other = team
    in_other = new_key(client, owner, other)
    editors = new_key(client, editor, space)
    assert client.delete(space_url(other), headers=owner.headers).status_code == 204
    assert stored(client, in_other["id"]) is None
    assert client.delete("/api/v1/auth/me", headers=editor.headers).status_code == 204
    assert stored(client, editors["id"]) is None
    with client.app.app_context():
        assert db.session.scalars(select(ApiKey)).all() == []
    assert_error(client.get(space_url(space), headers=with_key(editors)), 401, "api_key_invalid")


def test_key_without_any_credentials_is_still_401_token_missing(client, team):
    _owner, _editor, _viewer, space, _other = team
    assert_error(client.get(space_url(space)), 401, "token_missing")
