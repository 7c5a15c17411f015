from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt_identity

from spacio.extensions import db
from spacio.http import Blueprint, client_address, paginate
from spacio.invites import schemas, services

blp = Blueprint("invites", __name__, url_prefix="/api/v1", description="Invitations to spaces")


def inviter():
    return "user:" + get_jwt_identity()


@blp.route("/spaces/<uuid:space_id>/invites")
class Invites(MethodView):
    @blp.login_required
    @blp.limit("INVITE_RATE_LIMIT", key_func=inviter)
    @blp.arguments(schemas.InviteCreateSchema)
    @blp.response(201, schemas.InviteSchema(many=True))
    @blp.errors(403, 404, 503)
    def post(self, data, space_id):
        """Invite people by email (owner)

        One entry per distinct email, in order. An email that is already a member gets
        `status: "already_member"` and no mail; inviting a pending email again replaces
        its invite (the old link stops working). Each invitee is mailed
        `<FRONTEND_URL>/join?token=...`.
        """
        return services.invite(current_user, space_id, **data)

    @blp.login_required
    @blp.arguments(schemas.InviteListArgsSchema, location="query")
    @blp.response(200, schemas.InviteSchema(many=True))
    @blp.paginate()
    @blp.errors(403, 404)
    def get(self, args, space_id, pagination_parameters):
        """List a space's invites, newest first, with their status (owner)"""
        statement = services.invites_of(current_user, space_id, args.get("status"))
        return services.with_status(paginate(statement, pagination_parameters, db.session))


@blp.route("/spaces/<uuid:space_id>/invites/<uuid:invite_id>")
class InviteById(MethodView):
    @blp.login_required
    @blp.response(204)
    @blp.errors(403, 404, 409)
    def delete(self, space_id, invite_id):
        """Revoke an invite (owner); its link stops working"""
        services.revoke(current_user, space_id, invite_id)


@blp.route("/invites/accept")
class Accept(MethodView):
    @blp.login_required
    @blp.limit("INVITE_ACCEPT_RATE_LIMIT", key_func=client_address)
    @blp.limit("INVITE_ACCEPT_RATE_LIMIT", key_func=inviter)  # and per user: guessing from many addresses
    @blp.arguments(schemas.AcceptSchema)
    @blp.response(200, schemas.AcceptedSchema)
    @blp.errors(403, 404, 410)
    def post(self, data):
        """Accept an invite with the token from its link

        The invite must be for the logged-in user's email (else 403 `invite_not_for_you`,
        and the token stays usable). 410 with `invite_expired`, `invite_used` or
        `invite_revoked` when it can no longer be used.
        """
        return services.accept(current_user, data["token"])
