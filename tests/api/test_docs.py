"""OpenAPI 3 at /api/v1/openapi.json, Swagger UI at /docs, ReDoc at /redoc, all served locally."""

import re

import marshmallow as ma
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
    assert spec["components"]["securitySchemes"]["apiKeyAuth"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "a key from POST /api/v1/api-keys"}


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
            # API keys work inside their one space (and list it); elsewhere only a JWT does
            takes_keys = "{space_id}" in path or where == "GET /api/v1/spaces"
            expected = [{"bearerAuth": []}, {"apiKeyAuth": []}] if takes_keys else [{"bearerAuth": []}]
            assert operation.get("security") == expected, f"{where} does not document its auth"
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


def test_x_pagination_is_documented_as_the_json_string_it_is(spec):
    documented = 0
    for path, method, operation in operations(spec):
        for response in operation["responses"].values():
            header = response.get("headers", {}).get("X-Pagination")
            if header is not None:
                documented += 1
                assert header["schema"] == {"type": "string", "example": header["schema"]["example"]}, path
                assert "JSON" in header["description"]
    assert documented >= 6


@pytest.mark.parametrize("body", [{"chunk_overlap": 2.6e-42}, {"chunk_size": 512.5}, {"top_k": "5"}, {"top_k": True}])
def test_a_non_integer_setting_is_refused(body):
    from spacio.spaces.schemas import SettingsSchema

    with pytest.raises(ma.ValidationError):
        SettingsSchema().load(body)


TRIMMED_SAMPLES = ["", " ", "a", " a ", "\ta\n", "a\nb", "a\tb", "a\rb", "a\x00", "\x00a", "a\x07b", "a\x1cb",
                   "\x1ca\x1f", "\x85a\x85", "a\x85b", "\xa0a\u3000", "a\u2028b", "a\x7fb", "a\x9fb", "x" * 200,
                   " " + "x" * 200 + "\n", "x" * 201, "é" * 5, "\n\n", "a\n"]


@pytest.mark.parametrize("field", ["name", "description", "text", "bare"])
def test_trimmed_pattern_states_exactly_what_the_field_accepts(field):
    import random

    from spacio.chat.schemas import Text
    from spacio.schemas import Name, Trimmed

    made = {"name": Name(), "description": Trimmed(validate=ma.validate.Length(max=5)),
            "text": Text(validate=ma.validate.Length(min=1, max=200)), "bare": Trimmed()}[field]
    pattern = re.compile(made.metadata["pattern"])
    alphabet = "a é\t\n\r\x0b\x0c\x00\x1b\x1c\x1f\x7f\x85\x9f\xa0\u1680\u2000\u2028\u202f\u3000"
    rnd = random.Random(field)
    samples = TRIMMED_SAMPLES + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8))) for _ in range(3000)]
    for value in samples:
        try:
            made.deserialize(value)
            accepted = True
        except ma.ValidationError:
            accepted = False
        assert bool(pattern.search(value)) == accepted, repr(value)
    # the one thing the pattern leaves out: lone surrogates, which no JSON validator or
    # generator has (Rust's regex, Hypothesis), are refused all the same
    for value in ("\ud800a", "a\udfff"):
        with pytest.raises(ma.ValidationError):
            made.deserialize(value)


def test_trimmed_fields_document_their_rule(spec):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    schemas = spec["components"]["schemas"]
    for schema, field in [("SpaceCreate", "name"), ("SpaceCreate", "description"), ("Register", "name"),
                          ("Search", "query"), ("Query", "question"), ("Chat", "message"),
                          ("ConversationUpdate", "title")]:
        prop = schemas[schema]["properties"][field]
        assert "pattern" in prop, (schema, field)
        assert "maxLength" not in prop and "minLength" not in prop, "lengths count after trimming"
        # a pattern a validator cannot compile is ignored by it (schemathesis checks with this one)
        jsonschema_rs.validator_for({"type": "string", "pattern": prop["pattern"]})
    assert re.search(schemas["Chat"]["properties"]["message"]["pattern"], " line one\nline\ttwo\n")
    assert not re.search(schemas["SpaceCreate"]["properties"]["name"]["pattern"], "a\nb")


def test_whitespace_is_what_str_strip_strips():
    import sys

    from spacio.schemas import WHITESPACE

    assert WHITESPACE == {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}
