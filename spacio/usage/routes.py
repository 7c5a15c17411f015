from flask_jwt_extended import current_user

from spacio.http import Blueprint
from spacio.usage import schemas, services

blp = Blueprint("usage", __name__, url_prefix="/api/v1", description="Tokens and requests spent")


@blp.route("/usage")
@blp.login_required
@blp.arguments(schemas.UsageArgsSchema, location="query")
@blp.response(200, schemas.UsageSchema)
def usage(args):
    """Your tokens and requests in a window, by space; the owner of a space also sees everyone's totals"""
    return services.usage_of(current_user, args["window"])
