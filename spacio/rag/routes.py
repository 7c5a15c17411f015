"""GET /api/v1/plugins: what is installed, and what this server uses."""

import marshmallow as ma
from flask.views import MethodView

from spacio.http import Blueprint
from spacio.rag import registry
from spacio.rag.registry import PROTOCOLS

blp = Blueprint("plugins", __name__, url_prefix="/api/v1/plugins", description="Installed plugins")


class PluginSchema(ma.Schema):
    name = ma.fields.String(metadata={"description": "entry-point name: the value of SPACIO_<KIND>"})
    distribution = ma.fields.String()
    version = ma.fields.String()
    selected = ma.fields.Boolean(metadata={"description": "used by this server"})
    usable = ma.fields.Boolean(metadata={"description": "generators only: whether it can answer on this server "
                                                        "(configured, key present), so a space may choose it"})
    problem = ma.fields.String(allow_none=True, metadata={"description": "generators only: why it cannot answer"})


CatalogueSchema = ma.Schema.from_dict(
    {kind: ma.fields.List(ma.fields.Nested(PluginSchema)) for kind in PROTOCOLS}, name="PluginCatalogueSchema")


@blp.route("")
class Plugins(MethodView):
    @blp.login_required
    @blp.response(200, CatalogueSchema)
    def get(self):
        """Installed plugins per kind, with versions and which are selected"""
        return {kind: [{k: v for k, v in p.items() if k != "kind"} for p in items]
                for kind, items in registry().catalogue().items()}
