"""OpenAPI 3 at /api/v1/openapi.json, Swagger UI at /docs, ReDoc at /redoc, all served locally."""

import re

import pytest

SECURED_EXCEPTIONS = {"/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/password-reset",
                      "/api/v1/auth/password-reset/confirm"}


@pytest.fixture
def spec(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, operation


def test_spec_is_openapi_3_with_bearer_auth(spec):
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "Spacio"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def test_every_api_route_is_documented(client, spec):
    documented = {(re.sub(r"\{(\w+)\}", r"<\1>", p), m.upper()) for p, m, _ in operations(spec)}
    for rule in client.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule.endswith("openapi.json"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in the spec"


def test_every_operation_has_a_summary_and_documents_its_errors(spec):
    error_ref = "#/components/schemas/Error"
    for path, method, operation in operations(spec):
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), f"{where} has no summary"
        responses = operation["responses"]
        errors = {code for code in responses if code == "default" or int(code) >= 400}
        assert errors, f"{where} documents no error response"
        if path not in SECURED_EXCEPTIONS:
            assert operation.get("security") == [{"bearerAuth": []}], f"{where} does not document its auth"
            assert "401" in responses, f"{where} does not document 401"
        if "{space_id}" in path:
            assert "404" in responses, f"{where} does not document 404 for outsiders"
        if "requestBody" in operation:
            assert "422" in responses and "415" in responses, f"{where} does not document 415/422"
        for code in errors:
            ref = responses[code].get("$ref", "")
            assert ref.startswith("#/components/responses/"), f"{where} {code} is not the one error body"
    assert error_ref.rsplit("/", 1)[1] in spec["components"]["schemas"]


def test_error_schema_is_the_one_body(spec):
    schema = spec["components"]["schemas"]["Error"]
    assert set(schema["properties"]) == {"code", "status", "message", "reason", "errors"}
    assert set(schema["required"]) == {"code", "status", "message", "reason", "errors"}


def local_assets(html):
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(client, page):
    response = client.get(page)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assets = local_assets(html)
    assert assets, "the page loads its UI from files"
    for asset in assets:
        assert not re.match(r"(https?:)?//", asset), f"{page} loads {asset} from the network"
        asset_response = client.get(asset)
        assert asset_response.status_code == 200, asset
        assert len(asset_response.get_data()) > 1000, asset
    assert "/api/v1/openapi.json" in html


def test_swagger_ui_does_not_call_the_online_validator(client):
    assert '"validatorUrl": null' in client.get("/docs").get_data(as_text=True)
