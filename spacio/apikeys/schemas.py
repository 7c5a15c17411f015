import marshmallow as ma

from spacio.schemas import Name, Timestamp


class ApiKeyCreateSchema(ma.Schema):
    name = Name(required=True)
    space_id = ma.fields.UUID(required=True)
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(["viewer", "editor"]),
                            metadata={"description": "at most your own role in the space"})


class ApiKeySchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String(dump_only=True)
    space_id = ma.fields.UUID(dump_only=True)
    role = ma.fields.String(dump_only=True, metadata={"enum": ["viewer", "editor"]})
    created_at = Timestamp()
    last_used_at = Timestamp(allow_none=True, metadata={"description": "updated at most once a minute"})


class ApiKeyCreatedSchema(ApiKeySchema):
    key = ma.fields.String(dump_only=True, metadata={
        "description": "send as `X-API-Key: <key>`; shown only in this response"})
