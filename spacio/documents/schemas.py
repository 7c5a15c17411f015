import marshmallow as ma
from flask_smorest.fields import Upload

from spacio.documents.models import BUILD_STATUSES, STATUSES
from spacio.schemas import Timestamp


class ErrorInfoSchema(ma.Schema):
    reason = ma.fields.String(metadata={"description": "stable snake_case cause, e.g. encrypted, too_many_pages"})
    message = ma.fields.String()


class SkippedPageSchema(ma.Schema):
    page = ma.fields.Integer()
    reason = ma.fields.String(metadata={"description": "e.g. no_text_layer, too_many_pixels, ocr_timeout"})


class DiagnosticsSchema(ma.Schema):
    pages_with_text = ma.fields.Integer(metadata={"description": "pages read from the file's text layer"})
    pages_ocr = ma.fields.Integer(metadata={"description": "pages recognised from their image (OCR)"})
    pages_skipped = ma.fields.Integer(metadata={"description": "pages no text was kept from"})
    skipped = ma.fields.List(ma.fields.Nested(SkippedPageSchema), metadata={
        "description": "the skipped pages and why (at most 500)"})


class DocumentSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    filename = ma.fields.String(dump_only=True)
    media_type = ma.fields.String(dump_only=True, allow_none=True,
                                  metadata={"description": "sniffed from the content; null when unsupported"})
    size_bytes = ma.fields.Integer(dump_only=True)
    sha256 = ma.fields.String(dump_only=True)
    status = ma.fields.String(dump_only=True, metadata={"enum": list(STATUSES)})
    error = ma.fields.Nested(ErrorInfoSchema, dump_only=True, allow_none=True)
    progress = ma.fields.Float(dump_only=True, metadata={"description": "0..1 while parsing and embedding"})
    pages = ma.fields.Integer(dump_only=True, allow_none=True,
                              metadata={"description": "null for formats without pages"})
    chunks = ma.fields.Integer(dump_only=True)
    diagnostics = ma.fields.Nested(DiagnosticsSchema, dump_only=True, allow_none=True, metadata={
        "description": "per page, where the text came from; null for formats without pages, or before ingestion"})
    uploaded_by = ma.fields.UUID(dump_only=True, allow_none=True)
    created_at = Timestamp()
    updated_at = Timestamp()


class IngestionSchema(ma.Schema):
    count = ma.fields.Integer(metadata={"description": "documents queued for ingestion by this request"})


class UploadResultSchema(ma.Schema):
    documents = ma.fields.List(ma.fields.Nested(DocumentSchema))
    ingestion = ma.fields.Nested(IngestionSchema)


class UploadSchema(ma.Schema):
    files = ma.fields.List(Upload(), required=True, validate=ma.validate.Length(min=1),
                           metadata={"description": "one or more files (by default at most 20, 25 MB each)"})


class DocumentQuerySchema(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))


class ChunkSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    document_id = ma.fields.UUID(dump_only=True)
    ordinal = ma.fields.Integer(dump_only=True)
    page = ma.fields.Integer(dump_only=True, allow_none=True)
    page_end = ma.fields.Integer(dump_only=True, allow_none=True)
    heading = ma.fields.String(dump_only=True, allow_none=True)
    text = ma.fields.String(dump_only=True)
    tokens = ma.fields.Integer(dump_only=True)


class ReindexSchema(ma.Schema):
    id = ma.fields.UUID(allow_none=True, metadata={"description": "null when the space was never reindexed"})
    space_id = ma.fields.UUID()
    status = ma.fields.String(metadata={
        "enum": [*BUILD_STATUSES, "none"],
        "description": "building: the new index is being built while the old one answers; switched: the space "
                       "uses the new one; failed: the space kept the old one (see error); none: never reindexed"})
    error = ma.fields.Nested(ErrorInfoSchema, allow_none=True)
    pipeline = ma.fields.Dict(metadata={"description": "the plugins the new index is built with"})
    total = ma.fields.Integer(metadata={"description": "documents to index"})
    queued = ma.fields.Integer(metadata={"description": "documents still to index"})
    done = ma.fields.Integer(metadata={"description": "documents in the new index"})
    failed = ma.fields.Integer(metadata={"description": "documents the new plugins cannot read (they show it after "
                                                        "the switch)"})
    documents = ma.fields.Integer(metadata={"description": "the same as total"})
    created_at = Timestamp(allow_none=True)
    updated_at = Timestamp(allow_none=True)
