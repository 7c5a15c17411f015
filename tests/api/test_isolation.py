"""Space isolation (API.md "Who may do what"): every endpoint under /spaces/{space_id}
answers 404 `space_not_found` to a non-member, 403 to a member without the right, and
works for a member with the least role the contract allows.

TO ADD AN ENDPOINT: append one Endpoint row to ENDPOINTS below, with the least role
API.md's table allows. Paths and bodies may use the placeholders {space_id}, {user_id}
(a viewer other than the caller), {invite_id} (a pending invite); an endpoint that needs
another object (a document, a conversation, ...) creates it in `scene` and adds its id to
`scene.ids`. test_every_space_route_is_in_the_table fails until a new route has its row.

The same table runs with API-key principals (API.md "API keys"): a key acts as its creator
in its one space with at most its role, and answers 404 in any other space.
"""

import io
import re
import uuid
from dataclasses import dataclass

import pytest

from tests.api.helpers import space_url
from tests.conftest import assert_error

PREFIX = "/api/v1"
ROLES = ("viewer", "editor", "owner")  # in order of rights


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # under /api/v1, with {placeholders}
    role: str  # the least role that may call it
    body: dict | None = None  # JSON body (placeholders allowed in string values)
    ok: int | None = None  # the status a member with `role` gets; None = anything but 401/403/404
    upload: bool = False  # send a multipart file instead of a JSON body

    def __str__(self):
        return f"{self.method} {self.path}"


ENDPOINTS = [
    Endpoint("GET", "/spaces/{space_id}", "viewer", ok=200),
    Endpoint("PATCH", "/spaces/{space_id}", "owner", {"name": "Renamed"}, ok=200),
    Endpoint("DELETE", "/spaces/{space_id}", "owner", ok=204),
    Endpoint("GET", "/spaces/{space_id}/members", "viewer", ok=200),
    Endpoint("PATCH", "/spaces/{space_id}/members/{user_id}", "owner", {"role": "editor"}, ok=200),
    Endpoint("DELETE", "/spaces/{space_id}/members/{user_id}", "owner", ok=204),
    Endpoint("POST", "/spaces/{space_id}/transfer", "owner", {"user_id": "{user_id}"}, ok=200),
    Endpoint("POST", "/spaces/{space_id}/invites", "owner", {"emails": ["new@example.com"]}, ok=201),
    Endpoint("GET", "/spaces/{space_id}/invites", "owner", ok=200),
    Endpoint("DELETE", "/spaces/{space_id}/invites/{invite_id}", "owner", ok=204),
    Endpoint("GET", "/spaces/{space_id}/documents", "viewer", ok=200),
    Endpoint("POST", "/spaces/{space_id}/documents", "editor", upload=True, ok=202),
    Endpoint("GET", "/spaces/{space_id}/documents/{document_id}", "viewer", ok=200),
    Endpoint("DELETE", "/spaces/{space_id}/documents/{document_id}", "editor", ok=204),
    Endpoint("GET", "/spaces/{space_id}/documents/{document_id}/file", "viewer", ok=200),
    Endpoint("POST", "/spaces/{space_id}/documents/{document_id}/reindex", "editor", ok=202),
    Endpoint("POST", "/spaces/{space_id}/reindex", "editor", ok=202),
    Endpoint("GET", "/spaces/{space_id}/reindex", "viewer", ok=200),
    Endpoint("GET", "/spaces/{space_id}/chunks/{chunk_id}", "viewer", ok=200),
    Endpoint("POST", "/spaces/{space_id}/search", "viewer", {"query": "isolation"}, ok=200),
    Endpoint("POST", "/spaces/{space_id}/query", "viewer", {"question": "Is isolation tested on every endpoint?"},
             ok=200),
    Endpoint("POST", "/spaces/{space_id}/chat", "viewer", {"message": "Is isolation tested on every endpoint?"},
             ok=200),
    Endpoint("GET", "/spaces/{space_id}/conversations", "viewer", ok=200),
    # a conversation is its starter's own: {conversation_id} is the viewer's
    Endpoint("GET", "/spaces/{space_id}/conversations/{conversation_id}/messages", "viewer", ok=200),
    Endpoint("PATCH", "/spaces/{space_id}/conversations/{conversation_id}", "viewer", {"title": "Renamed"}, ok=200),
    Endpoint("DELETE", "/spaces/{space_id}/conversations/{conversation_id}", "viewer", ok=204),
]


def fill(template, ids):
    """Placeholders replaced in a path, or in every string of a JSON body."""
    if isinstance(template, str):
        return template.format(**ids)
    if isinstance(template, dict):
        return {key: fill(value, ids) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, ids) for value in template]
    return template


@dataclass
class Scene:
    owner: object
    members: dict  # role -> user with exactly that role
    outsider: object
    ids: dict  # placeholder -> id
    keys: dict  # name -> Principal with X-API-Key headers


@dataclass(frozen=True)
class Principal:
    headers: dict
    email: str = "api-key@example.com"


def api_key(client, user, space_id, role):
    response = client.post(f"{PREFIX}/api-keys", json={"name": f"{role} key", "space_id": space_id, "role": role},
                           headers=user.headers)
    assert response.status_code == 201, response.json
    return Principal({"X-API-Key": response.json["key"]})


@pytest.fixture
def scene(client):
    """A space with one member of each role, another viewer (the {user_id} target),
    a pending invite, and a logged-in user who is not a member."""
    owner = client.user("owner@example.com", "Owner")
    members = {"owner": owner}
    for role in ("viewer", "editor"):
        members[role] = client.user(f"{role}@example.com", role.title())
    target = client.user("target@example.com", "Target")
    outsider = client.user("outsider@example.com", "Outsider")
    # the outsider is a member elsewhere: being logged in and in a space is not enough
    client.space(outsider, "Outsider's own")

    space_id = client.space(owner, "Isolated")["id"]
    for role in ("viewer", "editor"):
        client.member(owner, space_id, members[role], role)
    client.member(owner, space_id, target, "viewer")
    response = client.post(space_url(space_id, "invites"), headers=owner.headers,
                           json={"emails": ["pending@example.com"]})
    assert response.status_code == 201, response.json
    ids = {"space_id": space_id, "user_id": target.id, "invite_id": response.json[0]["id"]}
    document = client.document(owner, space_id, b"Isolation is tested on every endpoint.", "note.txt")
    chunk_id = client.chunks(owner, space_id, document["id"])[0]
    ids.update(document_id=document["id"], chunk_id=chunk_id)
    response = client.post(space_url(space_id, "chat"), json={"message": "Hello"},
                           headers=members["viewer"].headers)
    assert response.status_code == 200, response.json
    ids["conversation_id"] = response.json["conversation_id"]
    keys = {
        # the viewer's own key: {conversation_id} is the viewer's
        "viewer": api_key(client, members["viewer"], space_id, "viewer"),
        # the owner's keys, capped below the owner's role
        "editor": api_key(client, owner, space_id, "editor"),
        "owner's viewer": api_key(client, owner, space_id, "viewer"),
        # a key of the owner's other space: it finds nothing here
        "other space": api_key(client, owner, client.space(owner, "Owner's other")["id"], "editor"),
    }
    return Scene(owner, members, outsider, ids, keys)


def call(client, endpoint, user, ids):
    if endpoint.upload:
        return client.open(PREFIX + fill(endpoint.path, ids), method=endpoint.method, headers=user.headers,
                           data={"files": (io.BytesIO(f"Uploaded by {user.email}.".encode()), "new.txt")})
    return client.open(PREFIX + fill(endpoint.path, ids), method=endpoint.method,
                       json=fill(endpoint.body, ids), headers=user.headers)


def observable_state(client, scene):
    """What the owner can see of the space: unchanged by every refused call."""
    space_id = scene.ids["space_id"]
    return [client.get(space_url(space_id, *rest), headers=scene.owner.headers).get_json()
            for rest in ((), ("members",), ("invites",), ("documents",))]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_space_endpoints_are_isolated(client, scene, endpoint):
    before = observable_state(client, scene)

    # a non-member learns nothing: the same 404 as for a space that does not exist
    assert_error(call(client, endpoint, scene.outsider, scene.ids), 404, "space_not_found")
    unknown = {**scene.ids, "space_id": str(uuid.uuid4())}
    assert_error(call(client, endpoint, scene.members["viewer"], unknown), 404, "space_not_found")

    # a member below the least role is refused
    for role in ROLES[:ROLES.index(endpoint.role)]:
        assert_error(call(client, endpoint, scene.members[role], scene.ids), 403)

    assert observable_state(client, scene) == before, "a refused call changed the space"

    # a member with exactly the least role is let through
    response = call(client, endpoint, scene.members[endpoint.role], scene.ids)
    assert response.status_code not in (401, 403, 404), response.get_json()
    if endpoint.ok is not None:
        assert response.status_code == endpoint.ok, response.get_json()


KEY_ROLES = {"viewer": "viewer", "owner's viewer": "viewer", "editor": "editor"}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_space_endpoints_are_isolated_for_api_keys(client, scene, endpoint):
    before = observable_state(client, scene)

    # a key of another space: 404 as for a non-member, even though its creator owns this space
    assert_error(call(client, endpoint, scene.keys["other space"], scene.ids), 404, "space_not_found")
    unknown = {**scene.ids, "space_id": str(uuid.uuid4())}
    assert_error(call(client, endpoint, scene.keys["editor"], unknown), 404, "space_not_found")

    # a key below the least role is refused, whatever its creator's role
    for name, role in KEY_ROLES.items():
        if ROLES.index(role) < ROLES.index(endpoint.role):
            assert_error(call(client, endpoint, scene.keys[name], scene.ids), 403)

    assert observable_state(client, scene) == before, "a refused call changed the space"

    # a key with exactly the least role is let through (no key is ever an owner)
    if endpoint.role != "owner":
        response = call(client, endpoint, scene.keys[endpoint.role], scene.ids)
        assert response.status_code not in (401, 403, 404), response.get_json()
        if endpoint.ok is not None:
            assert response.status_code == endpoint.ok, response.get_json()


def test_every_space_route_is_in_the_table(app):
    """Each method of each route under /api/v1/spaces/<space_id> has a row in ENDPOINTS,
    and each row names a real route (path placeholders are the route's variable names)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        if path == PREFIX + "/spaces/{space_id}" or path.startswith(PREFIX + "/spaces/{space_id}/"):
            routes |= {(method, path[len(PREFIX):]) for method in rule.methods - {"HEAD", "OPTIONS"}}

    table = {(e.method, e.path) for e in ENDPOINTS}
    assert len(table) == len(ENDPOINTS), "an endpoint is in the table twice"
    assert sorted(routes - table) == [], "space routes missing from ENDPOINTS"
    assert sorted(table - routes) == [], "ENDPOINTS rows that match no route"
    assert {e.role for e in ENDPOINTS} <= set(ROLES)
