"""The whole journey of two users through HTTP, with invites and resets mailed over real SMTP."""

from urllib.parse import quote

from spacio.config import Defaults
from tests.conftest import STRONG_PASSWORD, ApiClient, assert_error, token_in


def test_two_users_share_a_space_end_to_end(make_app, smtp_server):
    mailbox, port = smtp_server
    client = ApiClient(make_app(MAIL_URL=f"smtp://127.0.0.1:{port}").test_client())

    # two people sign up and log in
    alice = client.user("Alice@Example.com", "Alice")
    bob = client.user("bob@example.com", "Bob")
    assert alice.email == "alice@example.com"

    # alice creates a space and invites bob by email
    space = client.space(alice, "Lab notes", description="Shared reading")
    response = client.post(f"/api/v1/spaces/{space['id']}/invites",
                           json={"emails": ["BOB@example.com"]}, headers=alice.headers)
    assert response.status_code == 201
    [entry] = response.json
    assert (entry["email"], entry["role"], entry["status"]) == ("bob@example.com", "viewer", "pending")

    # the invite arrives over SMTP with a link into the frontend
    message = mailbox.last_to("bob@example.com")
    assert "Lab notes" in message["Subject"]
    body = mailbox.body(message)
    assert f"{Defaults.FRONTEND_URL}/join?token=" in body
    token = token_in(body, "join")

    # bob follows the link and joins as a viewer
    response = client.post("/api/v1/invites/accept", json={"token": token}, headers=bob.headers)
    assert response.status_code == 200
    assert response.json["role"] == "viewer" and response.json["space"]["id"] == space["id"]
    assert_error(client.post("/api/v1/invites/accept", json={"token": token}, headers=bob.headers),
                 410, "invite_used")

    members = client.get(f"/api/v1/spaces/{space['id']}/members", headers=bob.headers)
    assert [(m["email"], m["role"]) for m in members.json] == [
        ("alice@example.com", "owner"), ("bob@example.com", "viewer")]

    # alice promotes bob, then hands him the space
    response = client.patch(f"/api/v1/spaces/{space['id']}/members/{bob.id}",
                            json={"role": "editor"}, headers=alice.headers)
    assert response.status_code == 200 and response.json["role"] == "editor"
    response = client.post(f"/api/v1/spaces/{space['id']}/transfer", json={"user_id": bob.id}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json["owner_id"] == bob.id and response.json["role"] == "editor"

    # bob, now the owner, removes alice; she loses access entirely
    assert client.delete(f"/api/v1/spaces/{space['id']}/members/{alice.id}", headers=bob.headers).status_code == 204
    assert_error(client.get(f"/api/v1/spaces/{space['id']}", headers=alice.headers), 404, "space_not_found")

    # alice is invited back as editor and leaves by herself
    client.post(f"/api/v1/spaces/{space['id']}/invites",
                json={"emails": [alice.email], "role": "editor"}, headers=bob.headers)
    token = token_in(mailbox.body(mailbox.last_to(alice.email)), "join")
    response = client.post("/api/v1/invites/accept", json={"token": token}, headers=alice.headers)
    assert response.json["role"] == "editor"
    assert client.delete(f"/api/v1/spaces/{space['id']}/members/{alice.id}", headers=alice.headers).status_code == 204
    assert [m["email"] for m in client.get(f"/api/v1/spaces/{space['id']}/members", headers=bob.headers).json] == [
        "bob@example.com"]

    # refresh rotates; the spent refresh token again at once (a second tab) gets the same pair,
    # but one two rotations old revokes the whole session
    response = client.post("/api/v1/auth/refresh", headers=alice.refresh_headers)
    assert response.status_code == 200
    first = response.json
    assert first["refresh_token"] != alice.tokens["refresh_token"]
    assert client.post("/api/v1/auth/refresh", headers=alice.refresh_headers).json == first
    rotated = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {first['refresh_token']}"}).json
    assert_error(client.post("/api/v1/auth/refresh", headers=alice.refresh_headers), 401, "token_revoked")
    assert_error(client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}),
                 401, "token_revoked")

    # logout revokes the session's tokens
    assert client.post("/api/v1/auth/logout", headers=bob.headers).status_code == 204
    assert_error(client.get("/api/v1/auth/me", headers=bob.headers), 401, "token_revoked")
    assert_error(client.post("/api/v1/auth/refresh", headers=bob.refresh_headers), 401, "token_revoked")

    # bob forgot his password: the reset link comes by mail and works once
    assert client.post("/api/v1/auth/password-reset", json={"email": "Bob@Example.com"}).status_code == 202
    reset_mail = mailbox.last_to("bob@example.com")
    token = token_in(mailbox.body(reset_mail), "reset")
    new_password = "saffron-Kettle-48-brightly"
    response = client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": new_password})
    assert response.status_code == 204
    assert_error(client.post("/api/v1/auth/password-reset/confirm",
                             json={"token": token, "new_password": new_password}), 410, "reset_used")
    assert_error(client.post("/api/v1/auth/login", json={"email": bob.email, "password": STRONG_PASSWORD}),
                 401, "invalid_credentials")
    bob_again = client.login(bob.email, new_password)
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {bob_again['access_token']}"})
    assert me.json["name"] == "Bob"
    assert all(used is False for used in mailbox.starttls_used), "this server offers no TLS"


def test_smtp_with_starttls_and_login(make_app, starttls_server):
    """STARTTLS is used when offered (the server here requires it) and credentials in the URL log in."""
    mailbox, port, ca_file = starttls_server
    url = f"smtp://mailer:{quote('p@ss word')}@127.0.0.1:{port}"
    client = ApiClient(make_app(MAIL_URL=url, MAIL_TLS_CA_FILE=ca_file).test_client())
    client.register("carol@example.com", "Carol")
    assert client.post("/api/v1/auth/password-reset", json={"email": "carol@example.com"}).status_code == 202
    message = mailbox.last_to("carol@example.com")
    assert mailbox.starttls_used == [True]
    assert "/reset?token=" in mailbox.body(message)


def assert_invite_not_sent(client, mailbox):
    """An invite whose mail cannot leave answers 503 and is not kept."""
    alice = client.user("alice@example.com")
    space = client.space(alice)
    response = client.post(f"/api/v1/spaces/{space['id']}/invites", json={"emails": ["bob@example.com"]},
                           headers=alice.headers)
    assert_error(response, 503, "mail_unavailable")
    assert client.get(f"/api/v1/spaces/{space['id']}/invites", headers=alice.headers).json == []
    assert mailbox.messages == []


def test_smtp_refuses_an_untrusted_certificate(make_app, starttls_server):
    """Without the CA the server's certificate is not trusted: nothing is sent."""
    mailbox, port, _ca_file = starttls_server
    client = ApiClient(make_app(MAIL_URL=f"smtp://mailer:x@127.0.0.1:{port}").test_client())
    assert_invite_not_sent(client, mailbox)


def test_smtp_can_insist_on_starttls(make_app, smtp_server):
    """`?starttls=required`: a server that does not offer TLS gets nothing, not plain text."""
    mailbox, port = smtp_server
    client = ApiClient(make_app(MAIL_URL=f"smtp://127.0.0.1:{port}?starttls=required").test_client())
    assert_invite_not_sent(client, mailbox)
