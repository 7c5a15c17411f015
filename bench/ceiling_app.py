"""bench/load.py's ceilings: Spacio's own app (config, hooks, logging, metrics, CORS) with two
extra routes that answer what ``GET /api/v1/spaces`` answers, 20 spaces through the same
schema and pagination, from memory:

- ``/ceiling/checks``: behind ``login_required`` (JWT, the session and user lookup, the rate
  limit on Redis), without the page query;
- ``/ceiling/schema``: no authentication, no rate limit, no database: the serialisation only.

What they reach is what ``GET /api/v1/spaces`` could reach with a free page query, or with
free checks and a free query. Not part of Spacio: only bench/load.py serves it."""

from flask.views import MethodView
from flask_jwt_extended import current_user

from spacio import create_app
from spacio.extensions import db
from spacio.http import Blueprint, paginate
from spacio.spaces import schemas, services

#: the caller's first page as GET /api/v1/spaces loaded it (the first /ceiling/checks call
#: reads it once); then served from memory
PAGE = {}

blp = Blueprint("ceiling", __name__, url_prefix="/ceiling")


@blp.route("/checks")
class Checks(MethodView):
    @blp.login_required(api_key=True)
    @blp.response(200, schemas.SpaceSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        if not PAGE:
            PAGE["rows"] = paginate(services.spaces_of(current_user), pagination_parameters, db.session, rows=True)
            PAGE["total"] = pagination_parameters.item_count
        pagination_parameters.item_count = PAGE["total"]
        return PAGE["rows"]


@blp.route("/schema")
class Schema(MethodView):
    @blp.response(200, schemas.SpaceSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        pagination_parameters.item_count = PAGE.get("total", 0)
        return PAGE.get("rows", [])


app = create_app()
from spacio.extensions import api  # noqa: E402

api.register_blueprint(blp)
