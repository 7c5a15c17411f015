"""Invites (API.md "Invites"): creating, mailing, accepting, listing and revoking them."""

import base64
import hashlib
import logging
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text, update

from spacio.extensions import db
from spacio.invites.models import Invite
from spacio.mail import OutboxMessage
from spacio.spaces.models import Membership
from tests.api.helpers import assert_pagination, parse_timestamp, roles_in, space_url
from tests.conftest import ApiClient, assert_error, token_in

ACCEPT = "/api/v1/invites/accept"
INVITE_FIELDS = {"id", "email", "role", "expires_at", "status"}


def invites_url(space_id, *rest):
    return space_url(space_id, "invites", *rest)


def post_invites(client, owner, space_id, emails, **body):
    return client.post(invites_url(space_id), headers=owner.headers, json={"emails": emails, **body})


def accept(client, user, token):
    return client.post(ACCEPT, headers=user.headers, json={"token": token})


def mails_to(client, email):
    with client.app.app_context():
        return db.session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.to == email))


def invite_rows(client, **where):
    with client.app.app_context():
        rows = db.session.scalars(select(Invite).filter_by(**where).order_by(Invite.created_at)).all()
        db.session.expunge_all()
        return rows


def expire(client, email):
    """Move an invite's expiry into the past (the API cannot: expires_in_hours >= 1)."""
    with client.app.app_context():
        db.session.execute(update(Invite).where(Invite.email == email)
                           .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1)))
        db.session.commit()


def statuses(client, owner, space_id, query=""):
    response = client.get(invites_url(space_id) + query, headers=owner.headers)
    assert response.status_code == 200, response.json
    return {entry["email"]: entry["status"] for entry in response.json}


def statuses_by_role(client, owner, space_id):
    return [(e["role"], e["status"]) for e in client.get(invites_url(space_id), headers=owner.headers).json]


def assert_expires_in(entry, hours):
    expected = datetime.now(timezone.utc) + timedelta(hours=hours)
    assert abs(parse_timestamp(entry["expires_at"]) - expected) < timedelta(minutes=1), entry


# ---------------------------------------------------------------- creating invites


def test_invite_answers_one_pending_entry_per_email_in_order(client, alice, space):
    response = post_invites(client, alice, space["id"], ["zed@example.com", "amy@example.com"])
    assert response.status_code == 201, response.json
    assert [e["email"] for e in response.json] == ["zed@example.com", "amy@example.com"]
    for entry in response.json:
        assert INVITE_FIELDS <= set(entry)
        uuid.UUID(entry["id"])
        assert (entry["role"], entry["status"]) == ("viewer", "pending")
        assert_expires_in(entry, 72)
    assert len({e["id"] for e in response.json}) == 2


def test_invite_collapses_duplicates_and_case_variants(client, alice, space):
    emails = ["Bob@Example.com", "carol@example.com", "bob@example.com", " BOB@EXAMPLE.COM ", "Carol@example.com"]
    response = post_invites(client, alice, space["id"], emails)
    assert response.status_code == 201, response.json
    assert [e["email"] for e in response.json] == ["bob@example.com", "carol@example.com"]
    assert (mails_to(client, "bob@example.com"), mails_to(client, "carol@example.com")) == (1, 1)
    assert len(invite_rows(client)) == 2


def test_invite_with_role_and_lifetime(client, alice, space):
    response = post_invites(client, alice, space["id"], ["bob@example.com"], role="editor", expires_in_hours=5)
    assert response.status_code == 201, response.json
    [entry] = response.json
    assert entry["role"] == "editor"
    assert_expires_in(entry, 5)
    assert "5 hours" in client.outbox("bob@example.com")[1]


def test_an_existing_member_gets_already_member_and_no_mail(client, alice, bob, space):
    client.member(alice, space["id"], bob)
    mails_before = mails_to(client, bob.email)

    response = post_invites(client, alice, space["id"], ["BOB@example.com", "dave@example.com"], role="editor")
    assert response.status_code == 201, response.json
    member_entry, new_entry = response.json
    assert (member_entry["email"], member_entry["status"]) == ("bob@example.com", "already_member")
    assert (new_entry["email"], new_entry["status"]) == ("dave@example.com", "pending")
    assert mails_to(client, bob.email) == mails_before
    assert mails_to(client, "dave@example.com") == 1
    assert roles_in(client, alice, space["id"])[bob.email] == "viewer"  # not changed by the new invite
    assert [row.email for row in invite_rows(client, accepted_at=None)] == ["dave@example.com"]


def test_the_owner_is_already_a_member(client, alice, space):
    [entry] = post_invites(client, alice, space["id"], [alice.email]).json
    assert entry["status"] == "already_member"
    assert mails_to(client, alice.email) == 0


@pytest.mark.parametrize("body, field", [
    ({"emails": ["not-an-email"]}, "emails"),
    ({"emails": ["ok@example.com", "bad@"]}, "emails"),
    ({"emails": [""]}, "emails"),
    ({"emails": []}, "emails"),
    ({"emails": "bob@example.com"}, "emails"),
    ({}, "emails"),
    ({"emails": [f"user{n}@example.com" for n in range(51)]}, "emails"),
    ({"emails": ["bob@example.com"], "role": "owner"}, "role"),
    ({"emails": ["bob@example.com"], "role": "admin"}, "role"),
    ({"emails": ["bob@example.com"], "expires_in_hours": 0}, "expires_in_hours"),
    ({"emails": ["bob@example.com"], "expires_in_hours": 721}, "expires_in_hours"),
], ids=["invalid", "one-invalid", "empty-string", "empty-list", "not-a-list", "missing", "51-emails",
        "role-owner", "role-unknown", "zero-hours", "too-many-hours"])
def test_invalid_invites_are_422_and_send_nothing(client, alice, space, body, field):
    response = client.post(invites_url(space["id"]), headers=alice.headers, json=body)
    assert field in assert_error(response, 422)["errors"]
    assert invite_rows(client) == []
    with client.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_fifty_emails_are_allowed(client, alice, space):
    emails = [f"user{n}@example.com" for n in range(50)]
    response = post_invites(client, alice, space["id"], emails)
    assert response.status_code == 201, response.json
    assert [e["email"] for e in response.json] == emails


# ---------------------------------------------------------------- the token


def test_the_mail_carries_a_join_link_with_a_strong_token(client, alice, space):
    post_invites(client, alice, space["id"], ["bob@example.com", "carol@example.com"])
    subject, body = client.outbox("bob@example.com")
    assert "Research" in subject
    token = token_in(body, "join")
    assert f"{client.app.config['FRONTEND_URL']}/join?token={token}" in body
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", token)
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 16  # >= 128 bits
    assert token != token_in(client.outbox("carol@example.com")[1], "join")


def test_only_the_tokens_hash_is_stored(client, alice, space):
    token = client.invite(alice, space["id"], "bob@example.com")
    [row] = invite_rows(client)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    with client.app.app_context():
        stored = db.session.execute(text("SELECT * FROM invites")).all()
    assert len(stored) == 1
    assert all(token not in str(value) for value in stored[0]), stored[0]


def test_logs_mask_the_token(client, alice, bob, space, caplog):
    caplog.set_level(logging.DEBUG)
    token = client.invite(alice, space["id"], bob.email)
    assert accept(client, bob, token).status_code == 200

    mail_logs = [r.getMessage() for r in caplog.records if bob.email in r.getMessage()]
    assert mail_logs, "the outbox logs each mail it keeps"
    assert any(token[:4] in message for message in mail_logs)  # masked, not dropped
    for record in caplog.records:
        assert token not in record.getMessage(), record.getMessage()
    assert token not in caplog.text


# ---------------------------------------------------------------- accepting


def test_accept_makes_the_user_a_member_with_the_invited_role(client, alice, bob, space):
    token = client.invite(alice, space["id"], bob.email, "editor")
    response = accept(client, bob, token)
    assert response.status_code == 200, response.json
    assert set(response.json) == {"space", "role"}
    assert response.json["role"] == "editor"
    assert response.json["space"]["id"] == space["id"]
    assert response.json["space"]["name"] == "Research"
    assert response.json["space"]["role"] == "editor"
    assert client.get(space_url(space["id"]), headers=bob.headers).json["role"] == "editor"
    assert roles_in(client, alice, space["id"]) == {alice.email: "owner", bob.email: "editor"}
    assert statuses(client, alice, space["id"]) == {bob.email: "accepted"}


def test_an_invite_works_once(client, alice, bob, space):
    token = client.invite(alice, space["id"], bob.email)
    assert accept(client, bob, token).status_code == 200
    assert_error(accept(client, bob, token), 410, "invite_used")


def test_a_revoked_invite_is_gone(client, alice, bob, space):
    token = client.invite(alice, space["id"], bob.email)
    [row] = invite_rows(client)
    assert client.delete(invites_url(space["id"], row.id), headers=alice.headers).status_code == 204
    assert_error(accept(client, bob, token), 410, "invite_revoked")
    assert_error(client.get(space_url(space["id"]), headers=bob.headers), 404, "space_not_found")


def test_an_expired_invite_is_gone(client, alice, bob, space):
    token = client.invite(alice, space["id"], bob.email)
    expire(client, bob.email)
    assert_error(accept(client, bob, token), 410, "invite_expired")
    assert_error(client.get(space_url(space["id"]), headers=bob.headers), 404, "space_not_found")


def test_someone_else_cannot_use_the_token_and_it_stays_usable(client, alice, bob, carol, space):
    token = client.invite(alice, space["id"], bob.email)
    assert_error(accept(client, carol, token), 403, "invite_not_for_you")
    assert_error(client.get(space_url(space["id"]), headers=carol.headers), 404, "space_not_found")
    assert statuses(client, alice, space["id"]) == {bob.email: "pending"}

    assert accept(client, bob, token).status_code == 200
    assert roles_in(client, alice, space["id"]) == {alice.email: "owner", bob.email: "viewer"}


@pytest.mark.parametrize("token", ["no-such-token", "x" * 43, "A" * 200])
def test_an_unknown_token_is_404(client, alice, bob, space, token):
    client.invite(alice, space["id"], bob.email)
    assert_error(accept(client, bob, token), 404, "invite_not_found")


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 7}, {"token": "x" * 201}])
def test_accept_needs_a_token(client, bob, body):
    assert "token" in assert_error(client.post(ACCEPT, headers=bob.headers, json=body), 422)["errors"]


def test_accept_needs_a_login(client, alice, space):
    token = client.invite(alice, space["id"], "bob@example.com")
    assert_error(client.post(ACCEPT, json={"token": token}), 401)
    assert statuses(client, alice, space["id"]) == {"bob@example.com": "pending"}


def test_reinviting_a_pending_email_revokes_the_old_invite(client, alice, bob, space):
    old = client.invite(alice, space["id"], bob.email, "viewer")
    assert post_invites(client, alice, space["id"], ["BOB@example.com"], role="editor").status_code == 201
    new = token_in(client.outbox(bob.email)[1], "join")
    assert old != new
    assert sorted(statuses_by_role(client, alice, space["id"])) == [("editor", "pending"), ("viewer", "revoked")]

    assert_error(accept(client, bob, old), 410, "invite_revoked")
    response = accept(client, bob, new)
    assert response.status_code == 200, response.json
    assert response.json["role"] == "editor"


def test_reinviting_elsewhere_leaves_other_spaces_invites_alone(client, alice, bob, space):
    token = client.invite(alice, space["id"], bob.email)
    other = client.space(alice, "Other")
    client.invite(alice, other["id"], bob.email)
    assert accept(client, bob, token).status_code == 200


def test_a_former_member_can_be_invited_again(client, alice, bob, space):
    client.member(alice, space["id"], bob, "viewer")
    assert client.delete(space_url(space["id"], "members", bob.id), headers=bob.headers).status_code == 204

    [entry] = post_invites(client, alice, space["id"], [bob.email], role="editor").json
    assert entry["status"] == "pending"
    response = accept(client, bob, token_in(client.outbox(bob.email)[1], "join"))
    assert response.status_code == 200, response.json
    assert roles_in(client, alice, space["id"])[bob.email] == "editor"


@pytest.mark.parametrize("current, invited, expected", [
    ("viewer", "editor", "editor"),
    ("editor", "viewer", "editor"),
    ("viewer", "viewer", "viewer"),
])
def test_accepting_as_a_member_raises_the_role_but_never_lowers_it(client, alice, bob, space,
                                                                   current, invited, expected):
    """A pending invite can outlive a change of membership (the API answers `already_member`
    for new invites of members, so the member is added directly in the database)."""
    token = client.invite(alice, space["id"], bob.email, invited)
    with client.app.app_context():
        db.session.add(Membership(space_id=uuid.UUID(space["id"]), user_id=uuid.UUID(bob.id), role=current))
        db.session.commit()

    response = accept(client, bob, token)
    assert response.status_code == 200, response.json
    assert response.json["role"] == expected
    assert response.json["space"]["role"] == expected
    assert roles_in(client, alice, space["id"])[bob.email] == expected
    assert statuses(client, alice, space["id"]) == {bob.email: "accepted"}


# ---------------------------------------------------------------- listing


@pytest.fixture
def invites_in_every_state(client, alice, bob, space):
    """One invite per status: pending, accepted (by Bob), revoked, expired; created in that order."""
    client.invite(alice, space["id"], "pending@example.com")
    assert accept(client, bob, client.invite(alice, space["id"], bob.email)).status_code == 200
    client.invite(alice, space["id"], "revoked@example.com")
    [revoked] = invite_rows(client, email="revoked@example.com")
    assert client.delete(invites_url(space["id"], revoked.id), headers=alice.headers).status_code == 204
    client.invite(alice, space["id"], "expired@example.com")
    expire(client, "expired@example.com")
    return space


def test_list_shows_every_invite_with_its_status(client, alice, bob, invites_in_every_state):
    response = client.get(invites_url(invites_in_every_state["id"]), headers=alice.headers)
    assert response.status_code == 200
    assert all(INVITE_FIELDS <= set(entry) for entry in response.json)
    assert [(e["email"], e["status"]) for e in response.json] == [  # newest first
        ("expired@example.com", "expired"), ("revoked@example.com", "revoked"),
        (bob.email, "accepted"), ("pending@example.com", "pending")]
    assert_pagination(response, total=4, total_pages=1, page=1, page_size=50)


@pytest.mark.parametrize("status, email", [
    ("pending", "pending@example.com"), ("accepted", "bob@example.com"),
    ("revoked", "revoked@example.com"), ("expired", "expired@example.com"),
])
def test_list_filters_by_status(client, alice, invites_in_every_state, status, email):
    assert statuses(client, alice, invites_in_every_state["id"], f"?status={status}") == {email: status}


def test_list_rejects_an_unknown_status(client, alice, space):
    response = client.get(invites_url(space["id"]) + "?status=lost", headers=alice.headers)
    assert "status" in assert_error(response, 422)["errors"]


def test_list_is_paginated(client, alice, invites_in_every_state):
    url = invites_url(invites_in_every_state["id"])
    first = client.get(url + "?page_size=3", headers=alice.headers)
    second = client.get(url + "?page=2&page_size=3", headers=alice.headers)
    assert_pagination(first, total=4, total_pages=2, page=1, page_size=3)
    assert_pagination(second, total=4, total_pages=2, page=2, page_size=3)
    assert len(first.json) == 3 and len(second.json) == 1
    assert len({e["id"] for e in first.json + second.json}) == 4

    filtered = client.get(url + "?status=pending&page_size=1", headers=alice.headers)
    assert_pagination(filtered, total=1, total_pages=1, page=1, page_size=1)
    assert_error(client.get(url + "?page_size=201", headers=alice.headers), 422)


def test_list_shows_only_this_spaces_invites(client, alice, space):
    client.invite(alice, space["id"], "here@example.com")
    other = client.space(alice, "Other")
    client.invite(alice, other["id"], "there@example.com")
    assert statuses(client, alice, space["id"]) == {"here@example.com": "pending"}
    assert statuses(client, alice, other["id"]) == {"there@example.com": "pending"}


# ---------------------------------------------------------------- revoking


def test_revoke_marks_the_invite_revoked(client, alice, space):
    [entry] = post_invites(client, alice, space["id"], ["bob@example.com"]).json
    response = client.delete(invites_url(space["id"], entry["id"]), headers=alice.headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert statuses(client, alice, space["id"]) == {"bob@example.com": "revoked"}


def test_revoking_an_accepted_invite_is_409(client, alice, bob, space):
    [entry] = post_invites(client, alice, space["id"], [bob.email]).json
    assert accept(client, bob, token_in(client.outbox(bob.email)[1], "join")).status_code == 200
    assert_error(client.delete(invites_url(space["id"], entry["id"]), headers=alice.headers), 409, "invite_used")
    assert statuses(client, alice, space["id"]) == {bob.email: "accepted"}
    assert roles_in(client, alice, space["id"])[bob.email] == "viewer"


def test_revoking_another_spaces_invite_is_404(client, alice, bob, space):
    other = client.space(alice, "Other")
    [entry] = post_invites(client, alice, other["id"], [bob.email]).json
    assert_error(client.delete(invites_url(space["id"], entry["id"]), headers=alice.headers), 404, "invite_not_found")
    assert statuses(client, alice, other["id"]) == {bob.email: "pending"}


def test_revoking_an_unknown_invite_is_404(client, alice, space):
    assert_error(client.delete(invites_url(space["id"], uuid.uuid4()), headers=alice.headers), 404, "invite_not_found")


# ---------------------------------------------------------------- who may invite


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_only_the_owner_manages_invites(client, alice, bob, space, role):
    client.member(alice, space["id"], bob, role)
    [entry] = post_invites(client, alice, space["id"], ["dave@example.com"]).json

    assert_error(post_invites(client, bob, space["id"], ["eve@example.com"]), 403)
    assert_error(client.get(invites_url(space["id"]), headers=bob.headers), 403)
    assert_error(client.delete(invites_url(space["id"], entry["id"]), headers=bob.headers), 403)
    assert mails_to(client, "eve@example.com") == 0
    assert statuses(client, alice, space["id"])["dave@example.com"] == "pending"


# ---------------------------------------------------------------- rate limits


def test_guessing_invite_tokens_is_rate_limited(make_app):
    client = ApiClient(make_app(INVITE_ACCEPT_RATE_LIMIT="3 per minute").test_client())
    mallory = client.user("mallory@example.com")
    for _ in range(3):
        assert_error(accept(client, mallory, "guess-" + uuid.uuid4().hex), 404, "invite_not_found")
    response = accept(client, mallory, "guess-" + uuid.uuid4().hex)
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


def test_guessing_invite_tokens_from_many_addresses_is_limited_per_user(make_app):
    client = ApiClient(make_app(INVITE_ACCEPT_RATE_LIMIT="3 per minute").test_client())
    mallory, alice = client.user("mallory@example.com"), client.user("alice@example.com")

    def guess(user, n):
        return client.post("/api/v1/invites/accept", json={"token": "guess-" + uuid.uuid4().hex},
                           headers=user.headers, environ_base={"REMOTE_ADDR": f"10.9.0.{n}"})

    for n in range(3):
        assert_error(guess(mallory, n), 404, "invite_not_found")
    assert_error(guess(mallory, 99), 429, "rate_limited")
    assert_error(guess(alice, 98), 404, "invite_not_found")  # another user is not held back


def test_sending_invites_is_rate_limited_per_user(make_app):
    client = ApiClient(make_app(INVITE_RATE_LIMIT="2 per hour").test_client())
    alice, bob = client.user("alice@example.com"), client.user("bob@example.com")
    space, other = client.space(alice), client.space(bob)
    for n in range(2):
        assert post_invites(client, alice, space["id"], [f"guest{n}@example.com"]).status_code == 201
    assert_error(post_invites(client, alice, space["id"], ["guest9@example.com"]), 429, "rate_limited")
    assert mails_to(client, "guest9@example.com") == 0
    assert post_invites(client, bob, other["id"], ["guest9@example.com"]).status_code == 201, "per user"
