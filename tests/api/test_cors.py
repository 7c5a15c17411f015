"""CORS for the frontend: its origin, credentials, our headers allowed and exposed."""

from spacio.config import Defaults


def preflight(client, origin, method="POST", headers="Authorization, Content-Type, X-API-Key, X-Request-ID"):
    return client.options("/api/v1/spaces", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


def test_default_origin_is_the_frontend_url(client):
    origin = Defaults.FRONTEND_URL
    response = preflight(client, origin)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key", "x-request-id"} <= allowed


def test_other_origins_are_not_allowed(client):
    response = preflight(client, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in response.headers


def test_configured_origins_replace_the_default(make_app):
    client = make_app(CORS_ORIGINS="https://app.example.com, https://admin.example.com/").test_client()
    for origin in ("https://app.example.com", "https://admin.example.com"):
        assert preflight(client, origin).headers["Access-Control-Allow-Origin"] == origin
    assert "Access-Control-Allow-Origin" not in preflight(client, Defaults.FRONTEND_URL).headers


def test_frontend_reads_pagination_and_request_id(client):
    response = client.get("/api/v1/spaces", headers={"Origin": Defaults.FRONTEND_URL})
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-pagination", "x-request-id", "retry-after"} <= exposed
    assert response.headers["Access-Control-Allow-Origin"] == Defaults.FRONTEND_URL
