"""Spaces and members (API.md "Spaces and members", "Who may do what", "Conventions")."""

import uuid

import pytest

from spacio.rag import registry

from spacio.invites.models import Invite
from spacio.spaces.models import Membership
from tests.api.helpers import (
    SPACES,
    assert_pagination,
    assert_recent,
    count_rows,
    pagination_of,
    parse_timestamp,
    roles_in,
    space_url,
    sql_statements,
)
from tests.conftest import assert_error

SPACE_FIELDS = {"id", "name", "description", "owner_id", "role", "created_at", "settings", "pipeline"}
MEMBER_FIELDS = {"user_id", "email", "name", "role", "joined_at"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def team(client, alice, bob, carol, space):
    """Alice's space with Bob (viewer) and Carol (editor), who joined in that order."""
    client.member(alice, space["id"], bob, "viewer")
    client.member(alice, space["id"], carol, "editor")
    return space


# ---------------------------------------------------------------- create


def test_create_returns_the_space_with_the_callers_role(client, alice):
    response = client.post(SPACES, headers=alice.headers, json={
        "name": "  Research  ", "description": "Papers we read",
        "settings": {"system_prompt": "Answer briefly.", "temperature": 0.2, "top_k": 8,
                     "chunk_size": 512, "chunk_overlap": 64},
    })
    assert response.status_code == 201, response.json
    body = response.json
    assert SPACE_FIELDS <= set(body)
    uuid.UUID(body["id"])
    assert body["name"] == "Research"  # trimmed
    assert body["description"] == "Papers we read"
    assert body["owner_id"] == alice.id
    assert body["role"] == "owner"
    assert_recent(body["created_at"])
    assert body["settings"] == {"system_prompt": "Answer briefly.", "temperature": 0.2, "top_k": 8,
                                "chunk_size": 512, "chunk_overlap": 64}
    config = client.app.config
    embedder = registry(client.app).embedder
    assert body["pipeline"] == {"chunker": {"name": config["CHUNKER"]},
                                "embedder": {"name": config["EMBEDDER"], "model": embedder.model,
                                             "dimensions": embedder.dimensions},
                                "vector_store": {"name": config["VECTOR_STORE"]}}


def test_create_with_only_a_name_has_empty_description_and_settings(client, alice):
    body = client.space(alice, "Bare")
    assert body["description"] == ""
    assert body["settings"] == {}


def test_create_makes_the_creator_the_only_member(client, alice, space):
    members = client.get(space_url(space["id"], "members"), headers=alice.headers).json
    assert [(m["user_id"], m["role"]) for m in members] == [(alice.id, "owner")]


@pytest.mark.parametrize("body, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": 42}, "name"),
    ({"name": "ok", "description": "x" * 5001}, "description"),
    ({"name": "ok", "owner_id": str(uuid.uuid4())}, "owner_id"),
    ({"name": "ok", "pipeline": {"chunker": {"name": "other"}}}, "pipeline"),
], ids=["missing-name", "empty-name", "blank-name", "long-name", "non-string-name", "long-description",
        "owner-id-not-settable", "pipeline-read-only"])
def test_create_rejects_invalid_fields(client, alice, body, field):
    response = client.post(SPACES, headers=alice.headers, json=body)
    errors = assert_error(response, 422, "validation_error")["errors"]
    assert field in errors, errors
    assert client.get(SPACES, headers=alice.headers).json == []


@pytest.mark.parametrize("settings, key", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.01}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 101}, "top_k"),
    ({"chunk_size": 63}, "chunk_size"),
    ({"chunk_size": 4097}, "chunk_size"),
    ({"chunk_overlap": -1}, "chunk_overlap"),
    ({"system_prompt": "x" * 8001}, "system_prompt"),
    ({"top_k": "many"}, "top_k"),
    ({"colour": "red"}, "colour"),
    ({"chunk_size": 512, "chunk_overlap": 256}, "chunk_overlap"),
    ({"chunk_size": 512, "chunk_overlap": 400}, "chunk_overlap"),
], ids=["temperature-low", "temperature-high", "top_k-low", "top_k-high", "chunk_size-low", "chunk_size-high",
        "overlap-negative", "long-system-prompt", "top_k-not-a-number", "unknown-key", "overlap-half",
        "overlap-above-half"])
def test_create_rejects_invalid_settings(client, alice, settings, key):
    response = client.post(SPACES, headers=alice.headers, json={"name": "Research", "settings": settings})
    errors = assert_error(response, 422)["errors"]
    assert key in errors.get("settings", {}), errors
    assert client.get(SPACES, headers=alice.headers).json == []


def test_create_accepts_settings_at_their_limits(client, alice):
    settings = {"temperature": 2, "top_k": 100, "chunk_size": 64, "chunk_overlap": 31}
    assert client.space(alice, "Edges", settings=settings)["settings"] == settings
    settings = {"temperature": 0, "top_k": 1, "chunk_size": 4096, "chunk_overlap": 2047}
    assert client.space(alice, "Other edges", settings=settings)["settings"] == settings


def test_create_needs_a_login(client):
    assert_error(client.post(SPACES, json={"name": "Research"}), 401)


# ---------------------------------------------------------------- list


def test_list_shows_only_the_callers_spaces_with_their_role(client, alice, bob, carol):
    mine = [client.space(alice, f"Alice {n}")["id"] for n in range(3)]
    bobs = client.space(bob, "Bob's")["id"]
    client.member(bob, bobs, alice, "editor")

    response = client.get(SPACES, headers=alice.headers)
    assert response.status_code == 200
    roles = {s["id"]: s["role"] for s in response.json}
    assert roles == {**dict.fromkeys(mine, "owner"), bobs: "editor"}
    assert all(SPACE_FIELDS <= set(s) for s in response.json)

    assert [s["id"] for s in client.get(SPACES, headers=bob.headers).json] == [bobs]
    assert client.get(SPACES, headers=carol.headers).json == []


def test_list_is_newest_first(client, alice):
    ids = [client.space(alice, f"Space {n}")["id"] for n in range(3)]
    assert [s["id"] for s in client.get(SPACES, headers=alice.headers).json] == ids[::-1]


def test_list_is_paginated(client, alice):
    ids = {client.space(alice, f"Space {n}")["id"] for n in range(5)}

    pages = []
    for page, size in ((1, 2), (2, 2), (3, 1)):
        response = client.get(f"{SPACES}?page={page}&page_size=2", headers=alice.headers)
        assert response.status_code == 200
        assert len(response.json) == size
        assert_pagination(response, total=5, total_pages=3, page=page, page_size=2)
        pages += [s["id"] for s in response.json]
    assert len(pages) == 5 and set(pages) == ids


def test_list_defaults_to_pages_of_50(client, alice):
    client.space(alice)
    response = client.get(SPACES, headers=alice.headers)
    assert_pagination(response, total=1, total_pages=1, page=1, page_size=50)


def test_list_of_nothing_still_has_a_pagination_header(client, alice):
    response = client.get(SPACES, headers=alice.headers)
    assert response.json == []
    header = pagination_of(response)
    assert header["total"] == 0 and header["page"] == 1 and header["page_size"] == 50


def test_a_page_past_the_end_is_empty_however_far(client, alice):
    client.space(alice)
    largest = (2**63 - 1) // 200 + 1  # the last page whose offset still fits a bigint
    for page in (2, largest, largest + 1, 2**62):
        response = client.get(f"{SPACES}?page={page}&page_size=200", headers=alice.headers)
        assert response.status_code == 200 and response.json == []
        assert pagination_of(response)["total"] == 1


def test_every_page_has_the_total_full_partial_or_past_the_end(client, alice):
    """The total comes with the page's rows (one query), or on its own for an empty page."""
    for n in range(5):
        client.space(alice, f"Space {n}")
    for page, size, items in ((1, 5, 5), (1, 3, 3), (2, 3, 2), (3, 3, 0), (1, 200, 5)):
        response = client.get(SPACES, query_string={"page": page, "page_size": size}, headers=alice.headers)
        assert len(response.json) == items
        assert_pagination(response, total=5, total_pages=-(-5 // size), page=page, page_size=size)
    assert pagination_of(client.get(SPACES, headers=client.user("bob@example.com").headers))["total"] == 0


def test_a_list_request_makes_two_sql_statements(client, alice):
    """What every authenticated list costs: the session with its user (or the API key with
    its creator), then the page with the total on its rows. A page with nothing on it asks
    for the total on its own. (Neither a pool's pre-ping nor BEGIN/ROLLBACK count here.)"""
    spaces = [client.space(alice, f"Space {n}")["id"] for n in range(3)]
    key = client.post("/api/v1/api-keys", json={"name": "k", "space_id": spaces[0], "role": "viewer"},
                      headers=alice.headers).json["key"]
    for headers, listed in ((alice.headers, 3), ({"X-API-Key": key}, 1)):
        assert client.get(SPACES, headers=headers).status_code == 200  # a key's first use records it
        with sql_statements(client.app) as sent:
            response = client.get(SPACES, headers=headers)
        assert response.status_code == 200 and len(response.json) == listed
        assert pagination_of(response)["total"] == listed
        assert len(sent) <= 2, sent
    with sql_statements(client.app) as sent:
        response = client.get(SPACES, query_string={"page": 2}, headers=alice.headers)
    assert response.json == [] and pagination_of(response)["total"] == 3
    assert len(sent) <= 3, sent


def test_a_session_ended_in_one_request_is_refused_on_the_next(client, alice):
    """No cache between the session and a request: logout, or a password change (for the
    other sessions), holds from the very next request on."""
    phone = client.login(alice.email)
    phone_headers = {"Authorization": f"Bearer {phone['access_token']}"}
    assert client.get(SPACES, headers=phone_headers).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=phone_headers).status_code == 204
    assert_error(client.get(SPACES, headers=phone_headers), 401, "token_revoked")

    laptop = client.login(alice.email)
    laptop_headers = {"Authorization": f"Bearer {laptop['access_token']}"}
    assert client.get(SPACES, headers=laptop_headers).status_code == 200
    changed = client.post("/api/v1/auth/password", headers=alice.headers,
                          json={"current_password": alice.password, "new_password": "another-Lantern-48-slowly"})
    assert changed.status_code == 204, changed.json
    assert_error(client.get(SPACES, headers=laptop_headers), 401, "token_revoked")
    assert client.get(SPACES, headers=alice.headers).status_code == 200  # the session that changed it


def test_list_allows_pages_of_200(client, alice):
    client.space(alice)
    response = client.get(f"{SPACES}?page_size=200", headers=alice.headers)
    assert response.status_code == 200
    assert_pagination(response, total=1, total_pages=1, page=1, page_size=200)


@pytest.mark.parametrize("query, field", [
    ("page_size=201", "page_size"), ("page_size=0", "page_size"), ("page=0", "page"), ("page=first", "page"),
])
def test_list_rejects_bad_pagination(client, alice, query, field):
    errors = assert_error(client.get(f"{SPACES}?{query}", headers=alice.headers), 422)["errors"]
    assert field in errors, errors


# ---------------------------------------------------------------- get / patch / delete


def test_get_shows_the_space_with_the_callers_role(client, alice, bob, carol, team):
    for user, role in ((alice, "owner"), (bob, "viewer"), (carol, "editor")):
        response = client.get(space_url(team["id"]), headers=user.headers)
        assert response.status_code == 200
        assert response.json["id"] == team["id"]
        assert response.json["owner_id"] == alice.id
        assert response.json["role"] == role


def test_get_of_an_unknown_space_is_404(client, alice):
    assert_error(client.get(space_url(uuid.uuid4()), headers=alice.headers), 404, "space_not_found")


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "", {"GET", "PATCH", "DELETE"}),
    ("GET", "/transfer", {"POST"}),
])
def test_an_unsupported_method_is_405_with_allow(client, alice, space, method, path, allowed):
    response = client.open(space_url(space["id"]) + path, method=method, headers=alice.headers, json={})
    assert_error(response, 405)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_get_with_a_malformed_id_is_404(client, alice):
    assert_error(client.get(space_url("not-a-uuid"), headers=alice.headers), 404)


def test_patch_changes_name_and_description(client, alice, space):
    response = client.patch(space_url(space["id"]), headers=alice.headers,
                            json={"name": " Renamed ", "description": "New words"})
    assert response.status_code == 200, response.json
    assert (response.json["name"], response.json["description"]) == ("Renamed", "New words")
    assert response.json["role"] == "owner"
    stored = client.get(space_url(space["id"]), headers=alice.headers).json
    assert (stored["name"], stored["description"]) == ("Renamed", "New words")


def test_patch_merges_settings_and_null_removes_a_key(client, alice):
    space = client.space(alice, settings={"temperature": 0.5, "top_k": 5})
    url = space_url(space["id"])

    response = client.patch(url, headers=alice.headers, json={"settings": {"top_k": 8, "system_prompt": "Be brief."}})
    assert response.status_code == 200, response.json
    assert response.json["settings"] == {"temperature": 0.5, "top_k": 8, "system_prompt": "Be brief."}

    response = client.patch(url, headers=alice.headers, json={"settings": {"temperature": None}})
    assert response.status_code == 200, response.json
    assert response.json["settings"] == {"top_k": 8, "system_prompt": "Be brief."}
    assert client.get(url, headers=alice.headers).json["settings"] == {"top_k": 8, "system_prompt": "Be brief."}


def test_patch_without_settings_keeps_them(client, alice):
    space = client.space(alice, settings={"top_k": 5})
    response = client.patch(space_url(space["id"]), headers=alice.headers, json={"name": "Other"})
    assert response.json["settings"] == {"top_k": 5}


def test_patch_checks_overlap_against_the_merged_settings(client, alice):
    space = client.space(alice, settings={"chunk_size": 512, "chunk_overlap": 64})
    url = space_url(space["id"])
    errors = assert_error(client.patch(url, headers=alice.headers, json={"settings": {"chunk_overlap": 300}}),
                          422)["errors"]
    assert "chunk_overlap" in errors["settings"]
    assert_error(client.patch(url, headers=alice.headers, json={"settings": {"chunk_size": 128}}), 422)
    assert client.get(url, headers=alice.headers).json["settings"] == {"chunk_size": 512, "chunk_overlap": 64}


@pytest.mark.parametrize("body, field", [
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"settings": {"temperature": 3}}, "settings"),
    ({"settings": {"colour": "red"}}, "settings"),
    ({"settings": None}, "settings"),
    ({"pipeline": {}}, "pipeline"),
    ({"owner_id": str(uuid.uuid4())}, "owner_id"),
])
def test_patch_rejects_invalid_fields(client, alice, space, body, field):
    response = client.patch(space_url(space["id"]), headers=alice.headers, json=body)
    assert field in assert_error(response, 422)["errors"]
    stored = client.get(space_url(space["id"]), headers=alice.headers).json
    assert (stored["name"], stored["settings"], stored["owner_id"]) == ("Research", {}, alice.id)


@pytest.mark.parametrize("member", ["bob", "carol"], ids=["viewer", "editor"])
def test_only_the_owner_may_patch_or_delete(client, team, member, request):
    user = request.getfixturevalue(member)
    url = space_url(team["id"])
    assert_error(client.patch(url, headers=user.headers, json={"name": "Mine now"}), 403)
    assert_error(client.delete(url, headers=user.headers), 403)
    assert client.get(url, headers=user.headers).json["name"] == "Research"


def test_delete_removes_the_space(client, alice, space):
    response = client.delete(space_url(space["id"]), headers=alice.headers)
    assert response.status_code == 204
    assert_error(client.get(space_url(space["id"]), headers=alice.headers), 404, "space_not_found")
    assert client.get(SPACES, headers=alice.headers).json == []


def test_delete_removes_members_and_invites(client, alice, bob, carol, team):
    dave = client.user("dave@example.com", "Dave")
    pending_token = client.invite(alice, team["id"], dave.email, "editor")
    space_id = uuid.UUID(team["id"])
    assert count_rows(client.app, Membership, space_id=space_id) == 3
    assert count_rows(client.app, Invite, space_id=space_id) == 3  # Bob's, Carol's (accepted), Dave's

    assert client.delete(space_url(team["id"]), headers=alice.headers).status_code == 204

    assert count_rows(client.app, Membership, space_id=space_id) == 0
    assert count_rows(client.app, Invite, space_id=space_id) == 0
    assert_error(client.post("/api/v1/invites/accept", json={"token": pending_token}, headers=dave.headers),
                 404, "invite_not_found")
    for user in (bob, carol, dave):
        assert_error(client.get(space_url(team["id"]), headers=user.headers), 404, "space_not_found")
        assert client.get(SPACES, headers=user.headers).json == []


def test_delete_leaves_other_spaces_alone(client, alice, bob, team):
    other = client.space(alice, "Other")
    client.member(alice, other["id"], bob)
    client.delete(space_url(team["id"]), headers=alice.headers)
    assert count_rows(client.app, Membership, space_id=uuid.UUID(other["id"])) == 2
    assert [s["id"] for s in client.get(SPACES, headers=bob.headers).json] == [other["id"]]


# ---------------------------------------------------------------- members


def test_members_are_listed_in_join_order(client, alice, bob, carol, team):
    response = client.get(space_url(team["id"], "members"), headers=bob.headers)
    assert response.status_code == 200
    assert all(set(m) == MEMBER_FIELDS for m in response.json), response.json
    assert [(m["user_id"], m["email"], m["name"], m["role"]) for m in response.json] == [
        (alice.id, "alice@example.com", "Alice", "owner"),
        (bob.id, "bob@example.com", "Bob", "viewer"),
        (carol.id, "carol@example.com", "Carol", "editor"),
    ]
    joined = [parse_timestamp(m["joined_at"]) for m in response.json]
    assert joined == sorted(joined)
    assert_pagination(response, total=3, total_pages=1, page=1, page_size=50)


def test_members_are_paginated(client, alice, team):
    response = client.get(space_url(team["id"], "members") + "?page=2&page_size=2", headers=alice.headers)
    assert [m["email"] for m in response.json] == ["carol@example.com"]
    assert_pagination(response, total=3, total_pages=2, page=2, page_size=2)


def test_owner_changes_a_members_role(client, alice, bob, team):
    response = client.patch(space_url(team["id"], "members", bob.id), headers=alice.headers, json={"role": "editor"})
    assert response.status_code == 200, response.json
    assert (response.json["user_id"], response.json["role"]) == (bob.id, "editor")
    assert set(response.json) == MEMBER_FIELDS
    assert client.get(space_url(team["id"]), headers=bob.headers).json["role"] == "editor"

    response = client.patch(space_url(team["id"], "members", bob.id), headers=alice.headers, json={"role": "viewer"})
    assert response.json["role"] == "viewer"
    assert roles_in(client, alice, team["id"])["bob@example.com"] == "viewer"


@pytest.mark.parametrize("body", [{"role": "owner"}, {"role": "admin"}, {"role": None}, {}])
def test_change_role_accepts_only_viewer_or_editor(client, alice, bob, team, body):
    response = client.patch(space_url(team["id"], "members", bob.id), headers=alice.headers, json=body)
    assert "role" in assert_error(response, 422)["errors"]
    assert roles_in(client, alice, team["id"])["bob@example.com"] == "viewer"


def test_the_owners_role_is_fixed(client, alice, team):
    response = client.patch(space_url(team["id"], "members", alice.id), headers=alice.headers, json={"role": "editor"})
    assert_error(response, 409, "owner_role_fixed")
    assert roles_in(client, alice, team["id"])["alice@example.com"] == "owner"


def test_change_role_of_a_non_member_is_404(client, alice, team):
    stranger = client.user("stranger@example.com")
    response = client.patch(space_url(team["id"], "members", stranger.id), headers=alice.headers,
                            json={"role": "editor"})
    assert_error(response, 404, "member_not_found")


def test_an_editor_cannot_change_roles(client, bob, carol, team):
    response = client.patch(space_url(team["id"], "members", bob.id), headers=carol.headers, json={"role": "editor"})
    assert_error(response, 403)
    response = client.patch(space_url(team["id"], "members", carol.id), headers=carol.headers,
                            json={"role": "viewer"})
    assert_error(response, 403)


def test_owner_removes_a_member(client, alice, bob, team):
    response = client.delete(space_url(team["id"], "members", bob.id), headers=alice.headers)
    assert response.status_code == 204
    assert "bob@example.com" not in roles_in(client, alice, team["id"])
    assert_error(client.get(space_url(team["id"]), headers=bob.headers), 404, "space_not_found")
    assert client.get(SPACES, headers=bob.headers).json == []


def test_remove_a_non_member_is_404(client, alice, team):
    assert_error(client.delete(space_url(team["id"], "members", uuid.uuid4()), headers=alice.headers),
                 404, "member_not_found")


def test_an_editor_cannot_remove_another_member(client, bob, carol, team):
    assert_error(client.delete(space_url(team["id"], "members", bob.id), headers=carol.headers), 403)
    assert "bob@example.com" in roles_in(client, carol, team["id"])


@pytest.mark.parametrize("member", ["bob", "carol"], ids=["viewer", "editor"])
def test_a_member_may_leave(client, alice, team, member, request):
    user = request.getfixturevalue(member)
    response = client.delete(space_url(team["id"], "members", user.id), headers=user.headers)
    assert response.status_code == 204
    assert_error(client.get(space_url(team["id"]), headers=user.headers), 404, "space_not_found")
    assert_error(client.get(space_url(team["id"], "members"), headers=user.headers), 404, "space_not_found")
    assert user.email not in roles_in(client, alice, team["id"])


def test_the_owner_cannot_leave(client, alice, team):
    response = client.delete(space_url(team["id"], "members", alice.id), headers=alice.headers)
    assert_error(response, 409, "owner_cannot_leave")
    assert roles_in(client, alice, team["id"])["alice@example.com"] == "owner"


def test_a_member_cannot_remove_the_owner(client, alice, carol, team):
    assert_error(client.delete(space_url(team["id"], "members", alice.id), headers=carol.headers), 403)


# ---------------------------------------------------------------- transfer


def test_transfer_hands_ownership_to_a_member(client, alice, bob, team):
    response = client.post(space_url(team["id"], "transfer"), headers=alice.headers, json={"user_id": bob.id})
    assert response.status_code == 200, response.json
    assert response.json["id"] == team["id"]
    assert response.json["owner_id"] == bob.id
    assert response.json["role"] == "editor"  # the caller's new role

    assert roles_in(client, bob, team["id"]) == {
        "alice@example.com": "editor", "bob@example.com": "owner", "carol@example.com": "editor"}
    as_bob = client.get(space_url(team["id"]), headers=bob.headers).json
    assert (as_bob["owner_id"], as_bob["role"]) == (bob.id, "owner")
    # the rights move with the role
    assert_error(client.patch(space_url(team["id"]), headers=alice.headers, json={"name": "Still mine?"}), 403)
    assert client.patch(space_url(team["id"]), headers=bob.headers, json={"name": "Bob's"}).status_code == 200
    assert client.delete(space_url(team["id"], "members", alice.id), headers=alice.headers).status_code == 204


def test_transfer_to_a_non_member_is_404(client, alice, team):
    stranger = client.user("stranger@example.com")
    response = client.post(space_url(team["id"], "transfer"), headers=alice.headers, json={"user_id": stranger.id})
    assert_error(response, 404, "member_not_found")
    assert client.get(space_url(team["id"]), headers=alice.headers).json["owner_id"] == alice.id


def test_transfer_to_yourself_is_409(client, alice, team):
    response = client.post(space_url(team["id"], "transfer"), headers=alice.headers, json={"user_id": alice.id})
    assert_error(response, 409, "already_owner")
    assert roles_in(client, alice, team["id"])["alice@example.com"] == "owner"


@pytest.mark.parametrize("body", [{}, {"user_id": "bob"}, {"user_id": None}])
def test_transfer_needs_a_user_id(client, alice, team, body):
    response = client.post(space_url(team["id"], "transfer"), headers=alice.headers, json=body)
    assert "user_id" in assert_error(response, 422)["errors"]


def test_only_the_owner_may_transfer(client, alice, carol, team):
    response = client.post(space_url(team["id"], "transfer"), headers=carol.headers, json={"user_id": carol.id})
    assert_error(response, 403)
    assert client.get(space_url(team["id"]), headers=carol.headers).json["owner_id"] == alice.id
