import marshmallow as ma

from spacio.usage.services import WINDOWS


class UsageArgsSchema(ma.Schema):
    window = ma.fields.String(load_default="24h", validate=ma.validate.OneOf(list(WINDOWS)),
                              metadata={"description": "the last 24 hours (default) or 7 days"})


class UsageCountsSchema(ma.Schema):
    prompt_tokens = ma.fields.Integer(metadata={"description": "sent to the generator"})
    completion_tokens = ma.fields.Integer(metadata={"description": "generated"})
    embedding_tokens = ma.fields.Integer(metadata={"description": "questions embedded, and documents you uploaded"})
    requests = ma.fields.Integer(metadata={"description": "search, query and chat calls"})
    estimated_requests = ma.fields.Integer(metadata={
        "description": "of those, the ones whose generator tokens Spacio counted itself (an estimate): the "
                       "model's server reported no usage"})


class SpaceUsageSchema(UsageCountsSchema):
    space_id = ma.fields.UUID()
    name = ma.fields.String()
    space_totals = ma.fields.Nested(UsageCountsSchema,
                                    metadata={"description": "everyone's use; only in spaces you own"})


class UsageSchema(UsageCountsSchema):
    window = ma.fields.String(metadata={"enum": list(WINDOWS)})
    by_space = ma.fields.List(ma.fields.Nested(SpaceUsageSchema))
