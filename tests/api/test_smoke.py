def test_register_login_me(client):
    alice = client.user("alice@example.com", "Alice")
    response = client.get("/api/v1/auth/me", headers=alice.headers)
    assert response.status_code == 200
    assert response.json["email"] == "alice@example.com"
