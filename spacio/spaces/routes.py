from flask.views import MethodView
from flask_jwt_extended import current_user

from spacio.extensions import db
from spacio.http import Blueprint, paginate
from spacio.spaces import schemas, services

blp = Blueprint("spaces", __name__, url_prefix="/api/v1/spaces", description="Spaces and their members")


@blp.route("")
class Spaces(MethodView):
    @blp.login_required(api_key=True)  # through a key: the key's one space
    @blp.response(200, schemas.SpaceSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """List your spaces, newest first"""
        return paginate(services.spaces_of(current_user), pagination_parameters, db.session, rows=True)

    @blp.login_required
    @blp.arguments(schemas.SpaceCreateSchema)
    @blp.response(201, schemas.SpaceSchema)
    def post(self, data):
        """Create a space; you become its owner"""
        return services.create(current_user, **data)


@blp.route("/<uuid:space_id>")
class SpaceById(MethodView):
    @blp.login_required
    @blp.response(200, schemas.SpaceSchema)
    @blp.errors(404)
    def get(self, space_id):
        """Get a space"""
        return services.access(current_user, space_id)

    @blp.login_required
    @blp.arguments(schemas.SpaceUpdateSchema)
    @blp.response(200, schemas.SpaceSchema)
    @blp.errors(403, 404)
    def patch(self, data, space_id):
        """Update a space's name, description or settings (owner)"""
        return services.update(current_user, space_id, data)

    @blp.login_required
    @blp.response(204)
    @blp.errors(403, 404)
    def delete(self, space_id):
        """Delete a space and everything in it (owner)"""
        services.delete(current_user, space_id)


@blp.route("/<uuid:space_id>/members")
class Members(MethodView):
    @blp.login_required
    @blp.response(200, schemas.MemberSchema(many=True))
    @blp.paginate()
    @blp.errors(404)
    def get(self, space_id, pagination_parameters):
        """List the members of a space, in the order they joined"""
        space = services.access(current_user, space_id)
        return paginate(services.members_of(space), pagination_parameters, db.session)


@blp.route("/<uuid:space_id>/members/<uuid:user_id>")
class Member(MethodView):
    @blp.login_required
    @blp.arguments(schemas.MemberUpdateSchema)
    @blp.response(200, schemas.MemberSchema)
    @blp.errors(403, 404, 409)
    def patch(self, data, space_id, user_id):
        """Change a member's role (owner)"""
        return services.change_role(current_user, space_id, user_id, data["role"])

    @blp.login_required
    @blp.response(204)
    @blp.errors(403, 404, 409)
    def delete(self, space_id, user_id):
        """Remove a member (owner), or leave the space (your own user id)"""
        services.remove_member(current_user, space_id, user_id)


@blp.route("/<uuid:space_id>/transfer")
class Transfer(MethodView):
    @blp.login_required
    @blp.arguments(schemas.TransferSchema)
    @blp.response(200, schemas.SpaceSchema)
    @blp.errors(403, 404, 409)
    def post(self, data, space_id):
        """Hand ownership to another member (owner); you become an editor"""
        return services.transfer(current_user, space_id, data["user_id"])
