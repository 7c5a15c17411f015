import marshmallow as ma

from spacio.schemas import Email, Timestamp
from spacio.spaces.schemas import SpaceSchema

STATUSES = ["pending", "accepted", "revoked", "expired"]


class InviteCreateSchema(ma.Schema):
    emails = ma.fields.List(Email(), required=True, validate=ma.validate.Length(min=1, max=50))
    role = ma.fields.String(load_default="viewer", validate=ma.validate.OneOf(["viewer", "editor"]))
    expires_in_hours = ma.fields.Integer(strict=True, load_default=None, validate=ma.validate.Range(min=1, max=720),
                                         metadata={"description": "default 72"})


class InviteSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True, allow_none=True, metadata={"description": "null for `already_member`"})
    email = ma.fields.String(dump_only=True)
    role = ma.fields.String(dump_only=True, allow_none=True)
    status = ma.fields.String(dump_only=True, metadata={"enum": [*STATUSES, "already_member"]})
    expires_at = Timestamp(allow_none=True)
    created_at = Timestamp(allow_none=True)
    invited_by_id = ma.fields.UUID(dump_only=True, allow_none=True)


class InviteListArgsSchema(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))


class AcceptSchema(ma.Schema):
    token = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))


class AcceptedSchema(ma.Schema):
    space = ma.fields.Nested(SpaceSchema, dump_only=True)
    role = ma.fields.String(dump_only=True)
