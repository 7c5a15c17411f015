"""Identity over HTTP (API.md "Identity"): accounts, sessions, tokens, passwords, rate limits.

Every test runs on SQLite and on PostgreSQL (the ``app``/``client`` fixtures).
"""

import base64
import json
import time
import uuid
import warnings
from datetime import datetime, timedelta

import argon2
import jwt as pyjwt
import pytest
from sqlalchemy import func, select, update

from spacio.auth.models import AuthSession, PasswordReset
from spacio.db import utcnow
from spacio.extensions import db
from spacio.mail import OutboxMessage
from spacio.security import token_hash
from tests.conftest import STRONG_PASSWORD, TEST_SECRET, ApiClient, assert_error, token_in

AUTH = "/api/v1/auth"
NEW_PASSWORD = "marble-Falcon-58-gently"
WEAK_PASSWORD = "password123"


# ---------------------------------------------------------------- helpers


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def register(client, email="alice@example.com", password=STRONG_PASSWORD, name="Alice", **kwargs):
    return client.post(f"{AUTH}/register", json={"email": email, "password": password, "name": name}, **kwargs)


def login(client, email="alice@example.com", password=STRONG_PASSWORD, **kwargs):
    return client.post(f"{AUTH}/login", json={"email": email, "password": password}, **kwargs)


def get_me(client, access_token):
    return client.get(f"{AUTH}/me", headers=bearer(access_token))


def refresh(client, refresh_token):
    return client.post(f"{AUTH}/refresh", headers=bearer(refresh_token))


def assert_session_works(client, tokens):
    """The access token reads /me; the refresh token still rotates (returns the new pair)."""
    response = get_me(client, tokens["access_token"])
    assert response.status_code == 200, response.json
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 200, response.json
    return response.json


def assert_session_revoked(client, tokens, reason="token_revoked"):
    """Both tokens of the session answer 401 with the one error body."""
    assert_error(get_me(client, tokens["access_token"]), 401, reason)
    assert_error(refresh(client, tokens["refresh_token"]), 401, reason)


def assert_no_password(response, *passwords):
    """No response may contain a password or its hash."""
    text = response.get_data(as_text=True)
    for password in passwords:
        assert password not in text
    assert "password_hash" not in text
    assert "$argon2" not in text


def claims(token):
    return pyjwt.decode(token, options={"verify_signature": False})


def b64url(data):
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def outbox_count(app, to):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.to == to))


def request_reset(client, email):
    response = client.post(f"{AUTH}/password-reset", json={"email": email})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response


def reset_token(client, email):
    """Ask for a reset and return the token from the link in the mail."""
    request_reset(client, email)
    return token_in(client.outbox(email)[1], "reset")


def confirm_reset(client, token, new_password=NEW_PASSWORD):
    return client.post(f"{AUTH}/password-reset/confirm", json={"token": token, "new_password": new_password})


def set_reset_expiry(app, expires_at):
    with app.app_context():
        db.session.execute(update(PasswordReset).values(expires_at=expires_at))
        db.session.commit()


# ---------------------------------------------------------------- register


def test_register_returns_the_new_user(client):
    response = register(client, "alice@example.com", name="Alice")
    assert response.status_code == 201, response.json
    body = response.json
    assert set(body) == {"id", "email", "name", "created_at"}
    uuid.UUID(body["id"])
    assert body["email"] == "alice@example.com"
    assert body["name"] == "Alice"
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(created - utcnow()) < timedelta(minutes=1)
    assert_no_password(response, STRONG_PASSWORD)


def test_register_normalises_email_and_trims_name(client):
    response = register(client, "  Alice.Smith@Example.COM \t", name="  Alice Smith  ")
    assert response.status_code == 201, response.json
    assert response.json["email"] == "alice.smith@example.com"
    assert response.json["name"] == "Alice Smith"
    # and the stored form is what logs in
    assert login(client, "alice.smith@example.com").status_code == 200


@pytest.mark.parametrize("second", ["alice@example.com", "ALICE@EXAMPLE.COM", " Alice@example.com "])
def test_register_duplicate_email_is_409_case_insensitively(client, second):
    assert register(client, "Alice@Example.com").status_code == 201
    response = register(client, second, name="Other")
    assert_error(response, 409, "email_taken")
    assert_no_password(response, STRONG_PASSWORD)


@pytest.mark.parametrize("password, advice", [
    ("short1!", "Use at least 8 characters."),
    (WEAK_PASSWORD, None),
    ("aaaaaaaaaaaaaaaa", None),
])
def test_register_weak_password_is_422_with_advice(client, password, advice):
    response = register(client, password=password)
    body = assert_error(response, 422, "weak_password")
    assert list(body["errors"]) == ["password"]
    problems = body["errors"]["password"]
    assert problems and all(isinstance(p, str) and p for p in problems)
    if advice:
        assert advice in problems
    assert_no_password(response, password)
    assert login(client, password=password).status_code == 401  # nothing was created


@pytest.mark.parametrize("length", [73, 200, 256])
def test_register_and_login_with_a_long_password(client, length):
    """zxcvbn refuses more than 72 characters; long passwords must still work (not 500)."""
    password = ("lavender-Orbit-73-quietly-" * 10)[:length]
    response = register(client, password=password)
    assert response.status_code == 201, response.get_data(as_text=True)[:300]
    assert login(client, password=password).status_code == 200
    assert_error(login(client, password=password[:-1]), 401, "invalid_credentials")


def test_register_password_built_from_the_users_own_name_is_weak(client):
    """zxcvbn gets the email and name as user inputs: a password made of them is weak."""
    response = register(client, "quintessa@example.com", password="quintessabarrowmere", name="Quintessa Barrowmere")
    assert_error(response, 422, "weak_password")
    # the same password is fine for somebody else
    assert register(client, "bob@example.com", password="quintessabarrowmere", name="Bob").status_code == 201


@pytest.mark.parametrize("body, fields", [
    ({}, {"email", "password", "name"}),
    ({"email": "alice@example.com"}, {"password", "name"}),
    ({"email": 123, "password": STRONG_PASSWORD, "name": "Alice"}, {"email"}),
    ({"email": "alice@example.com", "password": 12345678901, "name": "Alice"}, {"password"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": ["Alice"]}, {"name"}),
    ({"email": None, "password": None, "name": None}, {"email", "password", "name"}),
    ({"email": "not-an-email", "password": STRONG_PASSWORD, "name": "Alice"}, {"email"}),
    ({"email": "a" * 250 + "@example.com", "password": STRONG_PASSWORD, "name": "Alice"}, {"email"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": ""}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "   "}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "x" * 101}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "x" * 100_000}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Al\x00ice"}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Alice\nSmith"}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Alice\x1b[31m"}, {"name"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Alice\ud800"}, {"name"}),
    ({"email": "alice@example.com", "password": "x" * 257, "name": "Alice"}, {"password"}),
    ({"email": "alice@example.com", "password": "", "name": "Alice"}, {"password"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Alice", "is_admin": True}, {"is_admin"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "name": "Alice", "id": str(uuid.uuid4())}, {"id"}),
], ids=["empty", "missing", "email-int", "password-int", "name-list", "nulls", "bad-email", "long-email",
        "empty-name", "blank-name", "name-101", "huge-name", "nul", "newline", "escape", "lone-surrogate",
        "long-password", "empty-password", "unknown-field", "id-field"])
def test_register_invalid_body_is_422_per_field(client, body, fields):
    response = client.post(f"{AUTH}/register", json=body)
    errors = assert_error(response, 422, "validation_error")["errors"]
    assert set(errors) == fields, errors
    assert all(isinstance(errors[f], list) and errors[f] for f in fields), errors
    assert_no_password(response, STRONG_PASSWORD, "x" * 257)
    with client.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuthSession)) == 0
        from spacio.auth.models import User

        assert db.session.scalar(select(func.count()).select_from(User)) == 0


@pytest.mark.parametrize("name", ["Zoë Ñandú", "李小龙", "Ἀριστοτέλης", "أحمد", "Émile 😀", "x" * 100, "O'Brien-Smith Jr."])
def test_register_accepts_valid_unicode_names(client, name):
    response = register(client, name=name)
    assert response.status_code == 201, response.json
    assert response.json["name"] == name
    tokens = login(client).json
    assert get_me(client, tokens["access_token"]).json["name"] == name


def test_register_non_json_body_is_415_and_bad_json_is_400(client):
    response = client.post(f"{AUTH}/register", data="email=a@example.com",
                           content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")
    response = client.post(f"{AUTH}/register", data='{"email": ', content_type="application/json")
    assert_error(response, 400, "invalid_json")


def test_register_body_over_the_json_limit_is_413(client):
    response = register(client, name="x" * (1024 * 1024 + 10))
    assert_error(response, 413)


# ---------------------------------------------------------------- login


def test_login_returns_a_token_pair(client):
    account = client.register("alice@example.com", "Alice")
    response = login(client)
    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == client.app.config["JWT_ACCESS_TOKEN_EXPIRES"] == 15 * 60
    access, refresh_claims = claims(body["access_token"]), claims(body["refresh_token"])
    assert access["type"] == "access" and refresh_claims["type"] == "refresh"
    assert access["sub"] == refresh_claims["sub"] == account["id"]
    assert access["sid"] == refresh_claims["sid"]
    assert access["exp"] - access["iat"] == body["expires_in"]
    assert_no_password(response, STRONG_PASSWORD)
    me = get_me(client, body["access_token"])
    assert me.status_code == 200
    assert me.json == account


def test_login_email_is_case_insensitive(client):
    client.register("alice@example.com")
    assert login(client, "  ALICE@Example.Com ").status_code == 200


def test_login_wrong_password_and_unknown_email_answer_identically(client):
    client.register("alice@example.com")
    wrong_password = login(client, "alice@example.com", "not-the-Password-42")
    unknown_email = login(client, "nobody@example.com", "not-the-Password-42")
    body = assert_error(wrong_password, 401, "invalid_credentials")
    assert_error(unknown_email, 401, "invalid_credentials")
    assert unknown_email.json == body
    assert_no_password(wrong_password, "not-the-Password-42")


def test_each_login_opens_a_separate_session(client):
    client.register("alice@example.com")
    first, second = login(client).json, login(client).json
    assert claims(first["access_token"])["sid"] != claims(second["access_token"])["sid"]


@pytest.mark.parametrize("body, fields", [
    ({}, {"email", "password"}),
    ({"email": "alice@example.com"}, {"password"}),
    ({"email": ["alice@example.com"], "password": STRONG_PASSWORD}, {"email"}),
    ({"email": "alice@example.com", "password": STRONG_PASSWORD, "remember": True}, {"remember"}),
])
def test_login_invalid_body_is_422(client, body, fields):
    errors = assert_error(client.post(f"{AUTH}/login", json=body), 422, "validation_error")["errors"]
    assert set(errors) == fields


def test_login_upgrades_a_hash_made_with_older_parameters(make_app):
    """Raising the argon2 cost takes effect for existing users at their next login."""
    from spacio.auth.models import User

    def stored_hash(app):
        with app.app_context():
            return db.session.scalars(select(User.password_hash)).one()

    old = ApiClient(make_app().test_client())
    old.register("alice@example.com")
    assert argon2.extract_parameters(stored_hash(old.app)).time_cost == 1
    new = ApiClient(make_app(ARGON2_TIME_COST=2).test_client())
    assert login(new).status_code == 200
    assert argon2.extract_parameters(stored_hash(new.app)).time_cost == 2
    assert login(new).status_code == 200  # the upgraded hash verifies


# ---------------------------------------------------------------- refresh


def test_refresh_rotates_the_pair(client):
    alice = client.user("alice@example.com")
    response = refresh(client, alice.tokens["refresh_token"])
    assert response.status_code == 200, response.json
    new = response.json
    assert {"access_token", "refresh_token", "expires_in"} <= set(new)
    assert new["refresh_token"] != alice.tokens["refresh_token"]
    assert new["access_token"] != alice.tokens["access_token"]
    assert claims(new["access_token"])["sid"] == claims(alice.tokens["access_token"])["sid"]
    assert get_me(client, new["access_token"]).status_code == 200
    # the old access token of the same session keeps working until it expires
    assert get_me(client, alice.tokens["access_token"]).status_code == 200
    # and the new refresh token rotates again
    assert refresh(client, new["refresh_token"]).status_code == 200


def age_last_rotation(app, seconds):
    """Move every session's last rotation ``seconds`` into the past (the grace window's clock)."""
    with app.app_context():
        for session in db.session.scalars(select(AuthSession).where(AuthSession.refreshed_at.is_not(None))):
            session.refreshed_at -= timedelta(seconds=seconds)
        db.session.commit()


def session_row(app, tokens):
    with app.app_context():
        return db.session.get(AuthSession, uuid.UUID(claims(tokens["access_token"])["sid"]))


def test_a_spent_refresh_token_again_within_the_grace_window_answers_the_same_pair(client):
    """Two tabs (or a retry whose answer was lost) refreshing with one token: the second gets
    the pair the first rotation issued, not a third one, and the session lives on."""
    alice = client.user("alice@example.com")
    first = refresh(client, alice.tokens["refresh_token"])
    assert first.status_code == 200, first.json
    again = refresh(client, alice.tokens["refresh_token"])
    assert again.status_code == 200, again.json
    assert again.json == first.json
    # one rotation happened: the session's current refresh token is the pair's
    assert session_row(client.app, first.json).refresh_jti == claims(first.json["refresh_token"])["jti"]
    assert session_row(client.app, first.json).revoked_at is None
    # the tabs hold the same, working pair: it reads /me and rotates once more
    assert get_me(client, alice.tokens["access_token"]).status_code == 200
    assert_session_works(client, again.json)


def test_the_grace_window_replays_only_the_last_rotation(client):
    """The token spent by the last rotation is answered; after one more rotation it is two
    rotations old, which only a copy can be: the session is revoked, even inside the window."""
    alice = client.user("alice@example.com")
    first = refresh(client, alice.tokens["refresh_token"]).json
    second = refresh(client, first["refresh_token"]).json
    assert refresh(client, first["refresh_token"]).json == second  # the last rotation: replayed
    assert_error(refresh(client, alice.tokens["refresh_token"]), 401, "token_revoked")
    assert_session_revoked(client, second)
    assert session_row(client.app, second).revoked_reason == "refresh_reuse"


def test_reusing_a_spent_refresh_token_after_the_grace_window_revokes_the_whole_session(client):
    alice = client.user("alice@example.com")
    other_session = login(client, alice.email).json
    new = refresh(client, alice.tokens["refresh_token"]).json
    age_last_rotation(client.app, client.app.config["JWT_REFRESH_REUSE_GRACE_S"] + 1)
    assert_error(refresh(client, alice.tokens["refresh_token"]), 401, "token_revoked")
    # the pair the legitimate refresh produced is dead too, and so is the original access token
    assert_session_revoked(client, new)
    assert_error(get_me(client, alice.tokens["access_token"]), 401, "token_revoked")
    # other sessions of the user are not affected
    assert_session_works(client, other_session)


def test_a_grace_window_of_zero_revokes_at_the_first_reuse(make_app):
    client = ApiClient(make_app(JWT_REFRESH_REUSE_GRACE_S=0).test_client())
    alice = client.user("alice@example.com")
    new = refresh(client, alice.tokens["refresh_token"]).json
    assert_error(refresh(client, alice.tokens["refresh_token"]), 401, "token_revoked")
    assert_session_revoked(client, new)


def test_a_spent_refresh_token_of_a_logged_out_session_gets_nothing_within_the_window(client):
    alice = client.user("alice@example.com")
    new = refresh(client, alice.tokens["refresh_token"]).json
    assert logout(client, new).status_code == 204
    assert_error(refresh(client, alice.tokens["refresh_token"]), 401, "token_revoked")


def test_two_refreshes_racing_with_one_token_rotate_once(client):
    """The rotation is a conditional update: a refresh whose token was rotated away between
    the blocklist check and the update (a concurrent request) does not rotate again; it
    answers the pair the winner issued."""
    from spacio.auth import services

    alice = client.user("alice@example.com")
    payload = claims(alice.tokens["refresh_token"])
    with client.app.app_context():
        winner = services.refresh(payload)
        assert services.refresh(payload) == winner
    assert session_row(client.app, winner).refresh_jti == claims(winner["refresh_token"])["jti"]
    assert_session_works(client, winner)


def test_access_token_is_refused_at_refresh(client):
    alice = client.user("alice@example.com")
    assert_error(refresh(client, alice.tokens["access_token"]), 401, "token_invalid")
    # and that did not spend or revoke anything
    assert_session_works(client, alice.tokens)


def test_refresh_token_is_refused_as_an_access_token(client):
    alice = client.user("alice@example.com")
    assert_error(get_me(client, alice.tokens["refresh_token"]), 401, "token_invalid")
    response = client.post(f"{AUTH}/logout", headers=bearer(alice.tokens["refresh_token"]))
    assert_error(response, 401, "token_invalid")
    assert_session_works(client, alice.tokens)


# ---------------------------------------------------------------- logout


def logout(client, tokens, query=""):
    return client.post(f"{AUTH}/logout{query}", headers=bearer(tokens["access_token"]))


def test_logout_revokes_this_session_only(client):
    alice = client.user("alice@example.com")
    laptop = login(client, alice.email).json
    response = logout(client, alice.tokens)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_session_revoked(client, alice.tokens)
    assert_session_works(client, laptop)
    assert_error(logout(client, alice.tokens), 401, "token_revoked")


def test_logout_all_revokes_every_session(client):
    alice = client.user("alice@example.com")
    sessions = [login(client, alice.email).json for _ in range(2)]
    bob = client.user("bob@example.com")
    assert logout(client, alice.tokens, "?all=true").status_code == 204
    for tokens in [alice.tokens, *sessions]:
        assert_session_revoked(client, tokens)
    assert_session_works(client, bob.tokens)  # another user's sessions are untouched
    # logging in again opens a fresh session
    assert_session_works(client, login(client, alice.email).json)


def test_logout_with_invalid_all_is_422(client):
    alice = client.user("alice@example.com")
    errors = assert_error(logout(client, alice.tokens, "?all=perhaps"), 422)["errors"]
    assert "all" in errors
    assert_session_works(client, alice.tokens)


# ---------------------------------------------------------------- me


def test_me_get_and_rename(client):
    alice = client.user("alice@example.com", "Alice")
    me = get_me(client, alice.tokens["access_token"])
    assert me.json == {"id": alice.id, "email": "alice@example.com", "name": "Alice",
                       "created_at": me.json["created_at"]}
    response = client.patch(f"{AUTH}/me", json={"name": "  Alice Liddell "}, headers=alice.headers)
    assert response.status_code == 200, response.json
    assert response.json["name"] == "Alice Liddell"
    assert response.json["id"] == alice.id
    assert get_me(client, alice.tokens["access_token"]).json["name"] == "Alice Liddell"


@pytest.mark.parametrize("body, field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"name": "a\tb"}, "name"),
    ({"name": "Alice", "email": "mallory@example.com"}, "email"),
])
def test_me_patch_invalid_is_422(client, body, field):
    alice = client.user("alice@example.com", "Alice")
    errors = assert_error(client.patch(f"{AUTH}/me", json=body, headers=alice.headers), 422)["errors"]
    assert field in errors
    assert get_me(client, alice.tokens["access_token"]).json["email"] == "alice@example.com"
    assert get_me(client, alice.tokens["access_token"]).json["name"] == "Alice"


def test_me_requires_a_token(client):
    for method in ("get", "patch", "delete"):
        assert_error(getattr(client, method)(f"{AUTH}/me"), 401, "token_missing")


def test_delete_me_removes_the_account(client):
    alice = client.user("alice@example.com")
    other_session = login(client, alice.email).json
    response = client.delete(f"{AUTH}/me", headers=alice.headers)
    assert response.status_code == 204
    assert_error(login(client, alice.email), 401, "invalid_credentials")
    for tokens in (alice.tokens, other_session):
        assert_error(get_me(client, tokens["access_token"]), 401)
        assert assert_error(refresh(client, tokens["refresh_token"]), 401)["reason"].startswith("token_")
    # the email is free again
    assert register(client, "alice@example.com").status_code == 201


def test_delete_me_while_owning_a_space_is_409_until_transferred(client):
    alice = client.user("alice@example.com")
    bob = client.user("bob@example.com")
    space = client.space(alice)
    client.member(alice, space["id"], bob)
    assert_error(client.delete(f"{AUTH}/me", headers=alice.headers), 409, "owns_spaces")
    assert get_me(client, alice.tokens["access_token"]).status_code == 200  # nothing happened
    response = client.post(f"/api/v1/spaces/{space['id']}/transfer", json={"user_id": bob.id}, headers=alice.headers)
    assert response.status_code == 200, response.json
    assert client.delete(f"{AUTH}/me", headers=alice.headers).status_code == 204
    # bob's space lives on without alice
    members = client.get(f"/api/v1/spaces/{space['id']}/members", headers=bob.headers)
    assert members.status_code == 200
    assert [m["user_id"] for m in members.json] == [bob.id]


def test_delete_me_after_deleting_the_owned_space(client):
    alice = client.user("alice@example.com")
    space = client.space(alice)
    assert_error(client.delete(f"{AUTH}/me", headers=alice.headers), 409, "owns_spaces")
    assert client.delete(f"/api/v1/spaces/{space['id']}", headers=alice.headers).status_code == 204
    assert client.delete(f"{AUTH}/me", headers=alice.headers).status_code == 204


def test_a_member_can_delete_their_account(client):
    alice = client.user("alice@example.com")
    bob = client.user("bob@example.com")
    space = client.space(alice)
    client.member(alice, space["id"], bob)
    assert client.delete(f"{AUTH}/me", headers=bob.headers).status_code == 204
    members = client.get(f"/api/v1/spaces/{space['id']}/members", headers=alice.headers)
    assert [m["user_id"] for m in members.json] == [alice.id]


# ---------------------------------------------------------------- password change


def change_password(client, tokens, current, new):
    return client.post(f"{AUTH}/password", json={"current_password": current, "new_password": new},
                       headers=bearer(tokens["access_token"]))


def test_password_change_with_wrong_current_is_422(client):
    alice = client.user("alice@example.com")
    response = change_password(client, alice.tokens, "not-the-Password-42", NEW_PASSWORD)
    body = assert_error(response, 422, "wrong_password")
    assert "current_password" in body["errors"]
    assert_no_password(response, "not-the-Password-42", NEW_PASSWORD)
    assert login(client, alice.email).status_code == 200
    assert_error(login(client, alice.email, NEW_PASSWORD), 401, "invalid_credentials")


def test_password_change_to_a_weak_password_is_422(client):
    alice = client.user("alice@example.com")
    body = assert_error(change_password(client, alice.tokens, STRONG_PASSWORD, WEAK_PASSWORD), 422, "weak_password")
    assert list(body["errors"]) == ["new_password"]
    assert body["errors"]["new_password"]
    assert login(client, alice.email).status_code == 200


def test_password_change_keeps_this_session_and_revokes_the_others(client):
    alice = client.user("alice@example.com")
    phone = login(client, alice.email).json
    response = change_password(client, alice.tokens, STRONG_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 204
    assert_no_password(response, STRONG_PASSWORD, NEW_PASSWORD)
    assert_session_works(client, alice.tokens)
    assert_session_revoked(client, phone)
    assert_error(login(client, alice.email, STRONG_PASSWORD), 401, "invalid_credentials")
    assert login(client, alice.email, NEW_PASSWORD).status_code == 200


def test_password_change_missing_fields_is_422(client):
    alice = client.user("alice@example.com")
    response = client.post(f"{AUTH}/password", json={}, headers=alice.headers)
    assert set(assert_error(response, 422, "validation_error")["errors"]) == {"current_password", "new_password"}


# ---------------------------------------------------------------- password reset


def test_password_reset_answers_the_same_for_known_and_unknown_emails(client):
    client.register("alice@example.com")
    known = request_reset(client, "alice@example.com")
    unknown = request_reset(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 202
    assert known.get_data() == unknown.get_data()
    assert outbox_count(client.app, "alice@example.com") == 1
    assert outbox_count(client.app, "nobody@example.com") == 0
    with client.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(OutboxMessage)) == 1


def test_password_reset_mails_a_frontend_link(make_app):
    client = ApiClient(make_app(FRONTEND_URL="https://spacio.example.org/app/").test_client())
    client.register("alice@example.com", "Alice")
    request_reset(client, "  ALICE@example.com")  # normalised like every email
    subject, body = client.outbox("alice@example.com")
    assert subject
    assert "https://spacio.example.org/app/reset?token=" in body
    token = token_in(body, "reset")
    assert len(token) >= 22  # >= 128 bits
    with client.app.app_context():
        reset = db.session.scalars(select(PasswordReset)).one()
        assert reset.token_hash == token_hash(token) != token  # only a hash is stored
        assert timedelta(minutes=59) < reset.expires_at - utcnow() <= timedelta(minutes=60)


def test_password_reset_confirm_sets_the_password_and_revokes_every_session(client):
    alice = client.user("alice@example.com")
    phone = login(client, alice.email).json
    token = reset_token(client, alice.email)
    response = confirm_reset(client, token)
    assert response.status_code == 204
    assert_no_password(response, NEW_PASSWORD)
    assert_session_revoked(client, alice.tokens)
    assert_session_revoked(client, phone)
    assert_error(login(client, alice.email), 401, "invalid_credentials")
    assert_session_works(client, login(client, alice.email, NEW_PASSWORD).json)
    # single use (a dead link says so before judging the new password)
    assert_error(confirm_reset(client, token, "another-Strong-pass-99"), 410, "reset_used")
    assert_error(confirm_reset(client, token, WEAK_PASSWORD), 410, "reset_used")
    assert login(client, alice.email, NEW_PASSWORD).status_code == 200


def test_password_reset_unknown_token_is_404(client):
    client.register("alice@example.com")
    assert_error(confirm_reset(client, "x" * 43), 404, "reset_not_found")


def test_password_reset_weak_password_is_422_and_the_link_stays_usable(client):
    client.register("alice@example.com")
    token = reset_token(client, "alice@example.com")
    body = assert_error(confirm_reset(client, token, WEAK_PASSWORD), 422, "weak_password")
    assert "new_password" in body["errors"]
    assert confirm_reset(client, token).status_code == 204


@pytest.mark.parametrize("body, fields", [
    ({}, {"token", "new_password"}),
    ({"token": "", "new_password": NEW_PASSWORD}, {"token"}),
    ({"token": "x" * 201, "new_password": NEW_PASSWORD}, {"token"}),
    ({"token": 42, "new_password": NEW_PASSWORD}, {"token"}),
])
def test_password_reset_confirm_invalid_body_is_422(client, body, fields):
    response = client.post(f"{AUTH}/password-reset/confirm", json=body)
    assert set(assert_error(response, 422, "validation_error")["errors"]) == fields


def test_password_reset_request_invalid_email_is_422(client):
    response = client.post(f"{AUTH}/password-reset", json={"email": "nope"})
    assert set(assert_error(response, 422, "validation_error")["errors"]) == {"email"}


def test_password_reset_expired_link_is_410(client):
    client.register("alice@example.com")
    token = reset_token(client, "alice@example.com")
    set_reset_expiry(client.app, utcnow() - timedelta(seconds=1))
    assert_error(confirm_reset(client, token), 410, "reset_expired")
    assert login(client, "alice@example.com").status_code == 200  # password unchanged


def test_password_reset_expiry_comes_from_config(make_app):
    client = ApiClient(make_app(PASSWORD_RESET_EXPIRES_MINUTES=0).test_client())
    client.register("alice@example.com")
    token = reset_token(client, "alice@example.com")
    assert_error(confirm_reset(client, token), 410, "reset_expired")


def test_a_second_reset_request_keeps_the_first_link_until_one_is_used(client):
    client.register("alice@example.com")
    first = reset_token(client, "alice@example.com")
    second = reset_token(client, "alice@example.com")
    assert first != second
    assert outbox_count(client.app, "alice@example.com") == 2
    assert confirm_reset(client, first).status_code == 204
    assert_error(confirm_reset(client, second, "another-Strong-pass-99"), 410, "reset_used")
    assert login(client, "alice@example.com", NEW_PASSWORD).status_code == 200


def test_password_reset_answers_202_when_the_mail_cannot_be_sent(make_app):
    """An SMTP failure must not reveal that the account exists; no usable link is stored."""
    client = ApiClient(make_app(MAIL_URL="smtp://127.0.0.1:1", MAIL_TIMEOUT=2).test_client())
    client.register("alice@example.com")
    known = client.post(f"{AUTH}/password-reset", json={"email": "alice@example.com"})
    unknown = client.post(f"{AUTH}/password-reset", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.get_data() == unknown.get_data()
    with client.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PasswordReset)) == 0


# ---------------------------------------------------------------- tampered and invalid tokens


OTHER_SECRET = "another-secret-" + "y" * 40


def _alg_none(tokens, _bob):
    header, payload, _sig = tokens["access_token"].split(".")
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload}."


def _alg_none_uppercase(tokens, _bob):
    _header, payload, _sig = tokens["access_token"].split(".")
    return f"{b64url({'alg': 'NONE', 'typ': 'JWT'})}.{payload}."


def _signature_stripped(tokens, _bob):
    header, payload, _sig = tokens["access_token"].split(".")
    return f"{header}.{payload}."


def _wrong_key(tokens, _bob):
    return pyjwt.encode(claims(tokens["access_token"]), OTHER_SECRET, algorithm="HS256")


def _other_algorithm(tokens, _bob):
    with warnings.catch_warnings():  # the test key is short for HS512; irrelevant here
        warnings.simplefilter("ignore", pyjwt.warnings.InsecureKeyLengthWarning)
        return pyjwt.encode(claims(tokens["access_token"]), TEST_SECRET, algorithm="HS512")


def _sub_swapped(tokens, bob):
    header, _payload, signature = tokens["access_token"].split(".")
    return f"{header}.{b64url({**claims(tokens['access_token']), 'sub': bob.id})}.{signature}"


def _exp_extended(tokens, _bob):
    header, _payload, signature = tokens["access_token"].split(".")
    payload = claims(tokens["access_token"])
    return f"{header}.{b64url({**payload, 'exp': payload['exp'] + 3600})}.{signature}"


def _garbage_payload(tokens, _bob):
    header, _payload, signature = tokens["access_token"].split(".")
    return f"{header}.{b64url(b'not json')}.{signature}"


@pytest.mark.parametrize("header, reason", [
    (None, "token_missing"),
    ("Basic YWxpY2U6cGFzcw==", "token_missing"),
    ("Bearer", "token_invalid"),
    ("Bearer abc", "token_invalid"),
    ("Bearer a.b.c", "token_invalid"),
    ("Bearer " + "x" * 5000, "token_invalid"),
], ids=["missing", "basic", "bearer-empty", "garbage", "three-parts", "long"])
def test_missing_or_malformed_authorization_is_401(client, header, reason):
    headers = {"Authorization": header} if header else {}
    response = client.get(f"{AUTH}/me", headers=headers)
    assert_error(response, 401, reason)
    assert response.headers.get("WWW-Authenticate") == "Bearer"


@pytest.mark.parametrize("forge", [
    _alg_none, _alg_none_uppercase, _signature_stripped, _wrong_key, _other_algorithm, _sub_swapped,
    _exp_extended, _garbage_payload,
], ids=lambda f: f.__name__.strip("_"))
def test_tampered_token_is_401_token_invalid(client, forge):
    alice = client.user("alice@example.com")
    bob = client.user("bob@example.com")
    token = forge(alice.tokens, bob)
    assert token != alice.tokens["access_token"]
    assert_error(get_me(client, token), 401, "token_invalid")
    assert_error(refresh(client, token), 401, "token_invalid")
    # the genuine tokens are unaffected
    assert get_me(client, alice.tokens["access_token"]).json["id"] == alice.id


def _sign(payload, secret=TEST_SECRET):
    return pyjwt.encode(payload, secret, algorithm="HS256")


def test_expired_access_and_refresh_tokens_are_401_token_expired(client):
    alice = client.user("alice@example.com")
    past = int(time.time()) - 60
    for kind in ("access_token", "refresh_token"):
        payload = claims(alice.tokens[kind])
        assert payload["sid"]  # a genuine, live session: only the expiry is wrong
        token = _sign({**payload, "iat": past - 900, "nbf": past - 900, "exp": past})
        call = get_me if kind == "access_token" else refresh
        assert_error(call(client, token), 401, "token_expired")
    assert_session_works(client, alice.tokens)


def test_access_token_expires_after_the_configured_lifetime(make_app):
    client = ApiClient(make_app(JWT_ACCESS_TOKEN_EXPIRES=1).test_client())
    alice = client.user("alice@example.com")
    assert alice.tokens["expires_in"] == 1
    exp = claims(alice.tokens["access_token"])["exp"]
    assert exp - claims(alice.tokens["access_token"])["iat"] == 1
    # verified once (and remembered by spacio.tokens): the expiry is still checked every time
    assert get_me(client, alice.tokens["access_token"]).status_code == 200
    time.sleep(max(0.0, exp - time.time()) + 0.05)  # no leeway: one moment past exp is too late
    assert_error(get_me(client, alice.tokens["access_token"]), 401, "token_expired")
    # the refresh token still gets a new one
    new = refresh(client, alice.tokens["refresh_token"]).json
    assert get_me(client, new["access_token"]).status_code == 200


def test_token_signed_with_the_real_key_for_another_users_session_is_401(client):
    """A token is bound to its session's user: a forged ``sub`` with a stolen ``sid`` fails."""
    alice = client.user("alice@example.com")
    bob = client.user("bob@example.com")
    token = _sign({**claims(alice.tokens["access_token"]), "sub": bob.id})
    assert assert_error(get_me(client, token), 401)["reason"].startswith("token_")


_MISSING = object()


@pytest.mark.parametrize("changes", [
    {"sid": _MISSING}, {"sid": "not-a-uuid"}, {"sid": str(uuid.uuid4())}, {"sid": None}, {"sid": 123},
    {"sid": ["x"]}, {"sub": 123}, {"sub": None}, {"sub": "not-a-uuid"}, {"sub": str(uuid.uuid4())},
], ids=["no-sid", "bad-sid", "unknown-sid", "null-sid", "int-sid", "list-sid", "int-sub", "null-sub",
        "bad-sub", "unknown-sub"])
def test_correctly_signed_token_with_odd_claims_is_401_not_500(client, changes):
    """Even with a valid signature, a token must name a live session of its own user."""
    alice = client.user("alice@example.com")
    payload = claims(alice.tokens["access_token"])
    for claim, value in changes.items():
        payload.pop(claim)
        if value is not _MISSING:
            payload[claim] = value
    assert assert_error(get_me(client, _sign(payload)), 401)["reason"].startswith("token_")
    assert get_me(client, alice.tokens["access_token"]).status_code == 200


def test_none_forged_expired_and_revoked_tokens_are_refused_on_space_routes_too(client):
    """The same checks guard every route, not just /auth/me; and a bad JWT is not rescued by
    a valid API key sent alongside (the Authorization header decides)."""
    alice = client.user("alice@example.com")
    space = client.space(alice)["id"]
    key = client.post("/api/v1/api-keys", json={"name": "k", "space_id": space, "role": "viewer"},
                      headers=alice.headers).json["key"]
    payload = claims(alice.tokens["access_token"])
    past = int(time.time()) - 60
    revoked = login(client, alice.email).json
    assert logout(client, revoked).status_code == 204
    cases = {
        "token_invalid": [_alg_none(alice.tokens, None), _wrong_key(alice.tokens, None)],
        "token_expired": [_sign({**payload, "iat": past - 900, "nbf": past - 900, "exp": past})],
        "token_revoked": [revoked["access_token"]],
    }
    for reason, tokens in cases.items():
        for token in tokens:
            for headers in ({}, {"X-API-Key": key}):
                response = client.get(f"/api/v1/spaces/{space}", headers={**bearer(token), **headers})
                assert_error(response, 401, reason)
    assert client.get(f"/api/v1/spaces/{space}", headers={"X-API-Key": key}).status_code == 200


def test_token_of_a_deleted_user_is_401(client):
    alice = client.user("alice@example.com")
    tokens = login(client, alice.email).json
    assert client.delete(f"{AUTH}/me", headers=alice.headers).status_code == 204
    assert assert_error(get_me(client, tokens["access_token"]), 401)["reason"].startswith("token_")
    # even re-signed as a fresh token for the deleted id
    payload = {**claims(tokens["access_token"]), "exp": int(time.time()) + 600}
    assert assert_error(get_me(client, _sign(payload)), 401)["reason"].startswith("token_")


# ---------------------------------------------------------------- restarts


def test_revocation_and_sessions_survive_a_restart(make_app):
    first = ApiClient(make_app().test_client())
    alice = first.user("alice@example.com")
    laptop = login(first, alice.email).json
    assert logout(first, alice.tokens).status_code == 204

    second = ApiClient(make_app().test_client())  # another process on the same database
    assert_session_revoked(second, alice.tokens)
    assert_session_works(second, laptop)


# ---------------------------------------------------------------- rate limits


def assert_rate_limited(response):
    assert_error(response, 429, "rate_limited")
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and int(retry_after) > 0, dict(response.headers)


def test_login_rate_limit_per_client_address(make_app):
    client = ApiClient(make_app(LOGIN_RATE_LIMIT="3 per minute").test_client())
    client.register("alice@example.com")
    emails = ["alice@example.com", "bob@example.com", "carol@example.com"]
    for email in emails:  # different accounts: only the address is common
        login(client, email, "not-the-Password-42")
    response = login(client, "dave@example.com")
    assert_rate_limited(response)
    # another address is not affected, and the right password works there
    assert login(client, environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_a_spoofed_x_forwarded_for_does_not_evade_the_address_limit(make_app):
    """With no trusted proxy configured (the default), X-Forwarded-For is the client's word
    and is ignored: every request here comes from the same address."""
    client = ApiClient(make_app(LOGIN_RATE_LIMIT="3 per minute").test_client())
    for n in range(3):
        login(client, f"user{n}@example.com", headers={"X-Forwarded-For": f"203.0.113.{n}"})
    assert_rate_limited(login(client, "user9@example.com", headers={"X-Forwarded-For": "203.0.113.9"}))


def test_login_rate_limit_per_email_across_addresses(make_app):
    client = ApiClient(make_app(LOGIN_RATE_LIMIT="3 per minute").test_client())
    client.register("alice@example.com")
    for n, email in enumerate(["alice@example.com", "ALICE@example.com", " Alice@Example.com"]):
        response = login(client, email, "not-the-Password-42", environ_base={"REMOTE_ADDR": f"10.0.0.{n + 1}"})
        assert_error(response, 401, "invalid_credentials")
    # a fresh address, the correct password: still limited, the account is under attack
    assert_rate_limited(login(client, "alice@example.com", environ_base={"REMOTE_ADDR": "10.0.0.99"}))
    # another account from that address is fine
    client.register("bob@example.com")
    assert login(client, "bob@example.com", environ_base={"REMOTE_ADDR": "10.0.0.99"}).status_code == 200


def test_password_reset_rate_limit_per_address_and_per_email(make_app):
    client = ApiClient(make_app(PASSWORD_RESET_RATE_LIMIT="2 per minute").test_client())
    client.register("alice@example.com")

    def ask(email, addr):
        return client.post(f"{AUTH}/password-reset", json={"email": email}, environ_base={"REMOTE_ADDR": addr})

    # per email, from different addresses
    assert ask("alice@example.com", "10.0.1.1").status_code == 202
    assert ask("Alice@Example.com", "10.0.1.2").status_code == 202
    assert_rate_limited(ask("alice@example.com", "10.0.1.3"))
    assert outbox_count(client.app, "alice@example.com") == 2
    # per address, different emails
    assert ask("x@example.com", "10.0.2.1").status_code == 202
    assert ask("y@example.com", "10.0.2.1").status_code == 202
    assert_rate_limited(ask("z@example.com", "10.0.2.1"))
    # the confirm endpoint is limited per address too (token guessing)
    for _ in range(2):
        response = client.post(f"{AUTH}/password-reset/confirm", json={"token": "guess", "new_password": NEW_PASSWORD},
                               environ_base={"REMOTE_ADDR": "10.0.3.1"})
        assert_error(response, 404, "reset_not_found")
    response = client.post(f"{AUTH}/password-reset/confirm", json={"token": "guess", "new_password": NEW_PASSWORD},
                           environ_base={"REMOTE_ADDR": "10.0.3.1"})
    assert_rate_limited(response)


def test_register_rate_limit(make_app):
    client = ApiClient(make_app(REGISTER_RATE_LIMIT="2 per minute").test_client())
    assert register(client, "a@example.com").status_code == 201
    assert register(client, "b@example.com").status_code == 201
    assert_rate_limited(register(client, "c@example.com"))
    assert register(client, "c@example.com", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 201
