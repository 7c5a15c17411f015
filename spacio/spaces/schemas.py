import marshmallow as ma

from spacio.schemas import Timestamp, Trimmed


class GeneratorChoiceSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100),
                            metadata={"description": "an installed generator that can answer here "
                                                     "(GET /plugins: usable)"})
    model = ma.fields.String(allow_none=True, validate=ma.validate.Length(min=1, max=200),
                             metadata={"description": "the generator's model; null: the one the server configures"})


class SettingsSchema(ma.Schema):
    """Per-space settings; `null` removes a key (back to the default)."""

    system_prompt = ma.fields.String(allow_none=True, validate=ma.validate.Length(max=8000))
    temperature = ma.fields.Float(allow_none=True, validate=ma.validate.Range(min=0, max=2))
    top_k = ma.fields.Integer(strict=True, allow_none=True, validate=ma.validate.Range(min=1, max=100))
    chunk_size = ma.fields.Integer(strict=True, allow_none=True, validate=ma.validate.Range(min=64, max=4096),
                                   metadata={"description": "tokens per chunk"})
    chunk_overlap = ma.fields.Integer(strict=True, allow_none=True, validate=ma.validate.Range(min=0, max=2048),
                                      metadata={"description": "tokens shared by neighbouring chunks; less than "
                                                                 "half of chunk_size (422 otherwise)"})
    generator = ma.fields.Nested(GeneratorChoiceSchema, allow_none=True, metadata={
        "description": "the generator (and model) that answers in this space; null: the server's (SPACIO_GENERATOR)"})


class SpaceSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String(dump_only=True)
    description = ma.fields.String(dump_only=True)
    owner_id = ma.fields.UUID(dump_only=True)
    role = ma.fields.String(dump_only=True, metadata={"description": "the caller's role in this space",
                                                      "enum": ["viewer", "editor", "owner"]})
    settings = ma.fields.Nested(SettingsSchema, dump_only=True)
    pipeline = ma.fields.Dict(dump_only=True, metadata={
        "description": "chunker, embedder and vector store its index was built with (read-only; "
                       "POST /spaces/{space_id}/reindex moves it to the server's current ones)"})
    created_at = Timestamp()
    updated_at = Timestamp()

    @ma.post_dump
    def _without_namespace(self, data, **kwargs):
        """Where the index lives in the vector store is the server's business."""
        if isinstance(data.get("pipeline"), dict):
            data["pipeline"] = {k: v for k, v in data["pipeline"].items() if k != "namespace"}
        return data


class SpaceCreateSchema(ma.Schema):
    name = Trimmed(required=True, validate=ma.validate.Length(min=1, max=200))
    description = Trimmed(load_default="", validate=ma.validate.Length(max=5000))
    settings = ma.fields.Nested(SettingsSchema, load_default=dict)


class SpaceUpdateSchema(ma.Schema):
    name = Trimmed(validate=ma.validate.Length(min=1, max=200))
    description = Trimmed(validate=ma.validate.Length(max=5000))
    settings = ma.fields.Nested(SettingsSchema)


class MemberSchema(ma.Schema):
    user_id = ma.fields.UUID(dump_only=True)
    email = ma.fields.String(dump_only=True, attribute="user.email")
    name = ma.fields.String(dump_only=True, attribute="user.name")
    role = ma.fields.String(dump_only=True, metadata={"enum": ["viewer", "editor", "owner"]})
    joined_at = Timestamp()


class MemberUpdateSchema(ma.Schema):
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(["viewer", "editor"]),
                            metadata={"description": "ownership moves with POST /transfer"})


class TransferSchema(ma.Schema):
    user_id = ma.fields.UUID(required=True)
