"""flask-smorest glue: the Api with the one error body, a Blueprint that documents
auth and errors, JSON-only request bodies, pagination helpers."""

import functools
from http import HTTPStatus

import flask_smorest
import marshmallow as ma
from flask import current_app, g, request
from webargs import core as webargs_core
from webargs.flaskparser import FlaskParser, is_json_request
from flask_jwt_extended import jwt_required
from sqlalchemy import func, select

from spacio import errors, jsonbody
from spacio.auth import principal


class Api(flask_smorest.Api):
    ERROR_SCHEMA = errors.ErrorSchema

    def init_app(self, app, *args, **kwargs):
        super().init_app(app, *args, **kwargs)
        self.ma_plugin.converter.add_attribute_function(_only_null)

    def handle_http_exception(self, error):
        return errors.http_exception_response(error)


def _only_null(self, field, ret, **kwargs):
    """apispec writes a nullable nested object (OpenAPI 3.0) as ``anyOf: [its schema, {type: object,
    nullable: true}]``, whose second branch admits ANY object: the null branch admits null only."""
    for branch in ret.get("anyOf") or ():
        if branch == {"type": "object", "nullable": True}:
            branch["enum"] = [None]
    return {}


def _api_rate_limit():
    return current_app.config["API_RATE_LIMIT"]


def authenticate_key(header, allowed):
    from spacio.apikeys.services import authenticate

    return authenticate(header, allowed)


def client_address():
    """The rate-limit key for anonymous routes (ProxyFix has resolved X-Forwarded-For)."""
    return request.remote_addr or "unknown"


def _is_json(mimetype):
    return mimetype == "application/json" or mimetype.endswith("+json")


class _JSONParser(FlaskParser):
    """webargs' parser reading bodies with ``spacio.jsonbody.loads``: a body too deep, with a
    number too long, or not JSON at all is 400 ``invalid_json`` saying why. An empty body is
    no body, as in webargs."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return webargs_core.missing
        data = req.get_data(cache=True)
        return jsonbody.loads(data) if data else webargs_core.missing


class _PaginationParser(FlaskParser):
    """smorest hands webargs its pagination schema as a class, so webargs built a new schema
    (a deep copy of its fields) for every paginated request: one instance per class instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._schemas = {}

    def _get_schema(self, argmap, req):
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = self._schemas.get(argmap)
            if schema is None:
                schema = self._schemas[argmap] = argmap()
            return schema
        return super()._get_schema(argmap, req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _JSONParser()
    DEFAULT_PAGINATION_PARAMETERS = {"page": 1, "page_size": 50, "max_page_size": 200}
    PAGINATION_ARGUMENTS_PARSER = _PaginationParser()

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        """X-Pagination: smorest's fields, always with the page asked for and its size."""
        metadata = flask_smorest.Blueprint._make_pagination_metadata(page, page_size, item_count)
        metadata.update(page=page, page_size=page_size)
        return metadata

    def _document_pagination_metadata(self, spec, resp_doc):
        """X-Pagination is what the server sends: a string, the metadata as JSON (smorest
        documents it as an object, which no header value is)."""
        resp_doc.setdefault("headers", {})[self.PAGINATION_HEADER_NAME] = {
            "description": "The page, as a JSON object: `total` (items), `total_pages`, `page` and `page_size` "
                           "(as asked for); when there are items also `first_page` and `last_page`, and "
                           "`previous_page` and `next_page` where there is one.",
            "schema": {"type": "string",
                       "example": '{"total": 120, "total_pages": 3, "first_page": 1, "last_page": 3, '
                                  '"page": 1, "next_page": 2, "page_size": 50}'},
        }

    def arguments(self, schema, *, location="json", required=True, **kwargs):
        """smorest's arguments, holding requests to what the spec says of their body: a JSON
        body is sent as JSON (415); a required one (smorest's default) is sent at all (400
        ``invalid_json``: webargs reads a missing body as ``{}``, which an operation whose
        fields are all optional would accept); files come as multipart/form-data (415).
        A chunked JSON body is read here (within its limit; webargs reuses it) to tell an
        empty one from one that was sent."""
        parse = super().arguments(schema, location=location, required=required, **kwargs)
        if location not in ("json", "files"):
            return parse

        def decorator(view):
            parsed = parse(view)

            @functools.wraps(parsed)
            def checked(*args, **kw):
                has_body = (request.content_length or 0) > 0
                if not has_body and request.headers.get("Transfer-Encoding") and location == "json":
                    has_body = bool(request.get_data(cache=True))
                if location == "files":
                    if request.mimetype != "multipart/form-data":
                        raise errors.UnsupportedMediaType("Upload files as multipart/form-data in the field 'files'.")
                elif has_body and not _is_json(request.mimetype):
                    raise errors.UnsupportedMediaType("Send the request body as application/json.")
                elif not has_body and required:
                    raise errors.SpacioError("This request needs a JSON body.", reason="invalid_json")
                return parsed(*args, **kw)

            return self.errors(415)(checked) if location == "files" else self.errors(400, 413, 415)(checked)

        return decorator

    def errors(self, *codes):
        """Document error responses (the one error body) for the given status codes."""

        def decorator(view):
            for code in codes:
                view = self.alt_response(code, response=HTTPStatus(code).name)(view)
            return view

        return decorator

    def login_required(self, view=None, *, refresh=False, api_key=None):
        """Require a valid access (or refresh) JWT, or an ``X-API-Key``; documents the
        security schemes, 401 and 403. Every authenticated request counts against
        ``API_RATE_LIMIT`` for its principal (``spacio.auth.principal()``).

        ``api_key``: whether the route takes API keys (403 ``api_key_not_allowed`` otherwise).
        None (the default) = the routes inside one space (with a ``space_id`` in the path),
        where a key's scope applies; account routes and the like do not take keys."""
        from spacio.extensions import limiter

        def decorator(view):
            scope = {"api_key": api_key}  # resolved by add_url_rule once the route is known
            limited = limiter.shared_limit(_api_rate_limit, scope="api", key_func=principal)(view)
            with_jwt = jwt_required(refresh=refresh)(limited)

            @functools.wraps(limited)
            def authenticated(*args, **kwargs):
                header = request.headers.get("X-API-Key")
                if header is None or refresh or "Authorization" in request.headers:
                    return with_jwt(*args, **kwargs)
                allowed = scope["api_key"]
                if allowed is None:
                    allowed = "space_id" in (request.view_args or {})
                user, key = authenticate_key(header, allowed)
                # what flask-jwt-extended keeps for a verified token: current_user and
                # get_jwt_identity() are the key's creator for code written for JWTs
                g._jwt_extended_jwt_user = {"loaded_user": user}
                g._jwt_extended_jwt = {"sub": str(user.id), "api_key": str(key.id)}
                return limited(*args, **kwargs)

            authenticated._spacio_auth = scope
            view = self.doc(security=[{"bearerAuth": []}])(authenticated)
            view._spacio_auth = scope
            return self.errors(401, 403, 429)(view)

        return decorator(view) if view is not None else decorator

    def add_url_rule(self, rule, endpoint=None, view_func=None, **options):
        """Document ``apiKeyAuth`` on the operations that take API keys (see login_required)."""
        views = [view_func]
        if isinstance(view_func, type):
            views = [getattr(view_func, method.lower(), None) for method in getattr(view_func, "methods", ())]
        for view in views:
            scope = getattr(view, "_spacio_auth", None)
            if scope is None:
                continue
            if scope["api_key"] is None:
                scope["api_key"] = "<space_id>" in rule or ":space_id>" in rule
            if scope["api_key"]:
                view._apidoc["manual_doc"]["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
        return super().add_url_rule(rule, endpoint, view_func, **options)

    def limit(self, config_key, key_func=None):
        """Rate-limit a view by a limit string read from config; documents 429."""
        from spacio.extensions import limiter

        def decorator(view):
            view = limiter.limit(lambda: current_app.config[config_key], key_func=key_func)(view)
            return self.errors(429)(view)

        return decorator


# the largest OFFSET PostgreSQL and SQLite take (a bigint)
_MAX_OFFSET = 2**63 - 1


def paginate(statement, pagination_parameters, session, *, rows=False):
    """Apply smorest pagination parameters to a select(); sets the item count for X-Pagination.

    A page with items costs one query: every row carries the count of the whole list
    (``count(*) OVER ()`` is computed before LIMIT and OFFSET). Only an empty page (nothing to
    list, or a page past the end) asks for the count on its own, so ``total`` is right there too.

    Returns entities, or with ``rows=True`` (a select of several columns) each row as a
    mapping of its column labels."""
    page, size = pagination_parameters.page, pagination_parameters.page_size
    offset = (page - 1) * size
    found = []
    if offset <= _MAX_OFFSET:  # a larger one is past the end anyway, and would not fit the SQL
        found = session.execute(statement.add_columns(func.count().over().label("total")).limit(size).offset(offset)).all()
    if found:
        pagination_parameters.item_count = found[0][-1]
    else:
        pagination_parameters.item_count = session.scalar(
            select(func.count()).select_from(statement.order_by(None).subquery()))
    if rows:
        return [{key: value for key, value in row._mapping.items() if key != "total"} for row in found]
    return [row[0] for row in found]
