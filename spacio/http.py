"""flask-smorest glue: the Api with the one error body, a Blueprint that documents
auth and errors, JSON-only request bodies, pagination helpers."""

import functools
from http import HTTPStatus

import flask_smorest
from flask import current_app, request
from flask_jwt_extended import jwt_required
from sqlalchemy import func, select

from spacio import errors


class Api(flask_smorest.Api):
    ERROR_SCHEMA = errors.ErrorSchema

    def handle_http_exception(self, error):
        return errors.http_exception_response(error)


def client_address():
    """The rate-limit key for anonymous routes (ProxyFix has resolved X-Forwarded-For)."""
    return request.remote_addr or "unknown"


def _is_json(mimetype):
    return mimetype == "application/json" or mimetype.endswith("+json")


class Blueprint(flask_smorest.Blueprint):
    DEFAULT_PAGINATION_PARAMETERS = {"page": 1, "page_size": 50, "max_page_size": 200}

    @staticmethod
    def _make_pagination_metadata(page, page_size, item_count):
        """X-Pagination: smorest's fields, always with the page asked for and its size."""
        metadata = flask_smorest.Blueprint._make_pagination_metadata(page, page_size, item_count)
        metadata.update(page=page, page_size=page_size)
        return metadata

    def arguments(self, schema, *, location="json", **kwargs):
        parse = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return parse

        def decorator(view):
            parsed = parse(view)

            @functools.wraps(parsed)
            def checked(*args, **kw):
                if (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding"):
                    if not _is_json(request.mimetype):
                        raise errors.UnsupportedMediaType("Send the request body as application/json.")
                return parsed(*args, **kw)

            return self.errors(415)(checked)

        return decorator

    def errors(self, *codes):
        """Document error responses (the one error body) for the given status codes."""

        def decorator(view):
            for code in codes:
                view = self.alt_response(code, response=HTTPStatus(code).name)(view)
            return view

        return decorator

    def login_required(self, view=None, *, refresh=False):
        """Require a valid access (or refresh) JWT; documents the security scheme and 401."""

        def decorator(view):
            view = jwt_required(refresh=refresh)(view)
            view = self.doc(security=[{"bearerAuth": []}])(view)
            return self.errors(401)(view)

        return decorator(view) if view is not None else decorator

    def limit(self, config_key, key_func=None):
        """Rate-limit a view by a limit string read from config; documents 429."""
        from spacio.extensions import limiter

        def decorator(view):
            view = limiter.limit(lambda: current_app.config[config_key], key_func=key_func)(view)
            return self.errors(429)(view)

        return decorator


def paginate(statement, pagination_parameters, session, *, rows=False):
    """Apply smorest pagination parameters to a select(); sets the item count for X-Pagination.

    Returns entities, or whole rows with ``rows=True`` (a select of several columns)."""
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery()))
    pagination_parameters.item_count = total
    page, size = pagination_parameters.page, pagination_parameters.page_size
    result = session.execute(statement.limit(size).offset((page - 1) * size))
    return result.all() if rows else result.scalars().all()
