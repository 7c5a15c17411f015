from flask.views import MethodView
from flask_jwt_extended import current_user

from spacio.apikeys import schemas, services
from spacio.extensions import db
from spacio.http import Blueprint, paginate

blp = Blueprint("api-keys", __name__, url_prefix="/api/v1/api-keys",
                description="API keys: one space, a role, sent as X-API-Key")


@blp.route("")
class ApiKeys(MethodView):
    @blp.login_required(api_key=False)
    @blp.arguments(schemas.ApiKeyCreateSchema)
    @blp.response(201, schemas.ApiKeyCreatedSchema)
    @blp.errors(403, 404, 409)
    def post(self, data):
        """Create an API key for one of your spaces

        The key acts as you inside that space only, with the lesser of its role and your
        role there at the time of each request. `key` is shown only in this response: it is
        stored as a hash. At most your own role (403 `role_too_high`); a space you are not a
        member of is 404 `space_not_found`.
        """
        return services.create(current_user, **data)

    @blp.login_required(api_key=False)
    @blp.response(200, schemas.ApiKeySchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """List your API keys, newest first (without their secrets)"""
        return paginate(services.keys_of(current_user), pagination_parameters, db.session)


@blp.route("/<uuid:key_id>")
class ApiKeyById(MethodView):
    @blp.login_required(api_key=False)
    @blp.response(204)
    @blp.errors(404)
    def delete(self, key_id):
        """Revoke an API key; it answers 401 `api_key_invalid` afterwards"""
        services.revoke(current_user, key_id)
