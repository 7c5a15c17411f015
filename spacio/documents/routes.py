from urllib.parse import quote

from flask import Response
from flask.views import MethodView
from flask_jwt_extended import current_user

from spacio.auth import principal
from spacio.documents import schemas, services
from spacio.errors import SpacioError, UnsupportedMediaType
from spacio.extensions import db
from spacio.http import Blueprint, paginate
from spacio.rag.sniff import JSON, SUPPORTED

blp = Blueprint("documents", __name__, url_prefix="/api/v1/spaces",
                description="Documents: upload, ingestion status, original files, chunks")


class PayloadTooLarge(SpacioError):
    code = 413
    reason = "file_too_large"


@blp.route("/<uuid:space_id>/documents")
class Documents(MethodView):
    @blp.login_required
    @blp.arguments(schemas.DocumentQuerySchema, location="query")
    @blp.response(200, schemas.DocumentSchema(many=True))
    @blp.paginate()
    @blp.errors(404)
    def get(self, query, space_id, pagination_parameters):
        """List the space's documents, newest first; filter with ?status="""
        return paginate(services.documents_of(current_user, space_id, query.get("status")),
                        pagination_parameters, db.session)

    @blp.login_required
    @blp.limit("UPLOAD_RATE_LIMIT", key_func=principal)
    @blp.arguments(schemas.UploadSchema, location="files")
    @blp.response(202, schemas.UploadResultSchema)
    @blp.errors(403, 404, 413, 415)
    def post(self, data, space_id):
        """Upload files (multipart field `files`, editor); ingestion runs in the background

        One entry per file, in order. Unsupported or oversized files get a `failed` entry;
        the request answers 415/413 only when every file is rejected."""
        documents, count = services.add_documents(current_user, space_id, data["files"])
        rejected = services.all_rejected(documents)
        if rejected:
            details = {"files": [{"filename": d.filename, "document_id": str(d.id), **d.error} for d in documents]}
            error = PayloadTooLarge if rejected == "file_too_large" else UnsupportedMediaType
            raise error(documents[0].error_message if len(documents) == 1 else "No file of this upload was accepted.",
                        reason=rejected, errors=details)
        return {"documents": documents, "ingestion": {"count": count}}


@blp.route("/<uuid:space_id>/documents/<uuid:document_id>")
class DocumentById(MethodView):
    @blp.login_required
    @blp.response(200, schemas.DocumentSchema)
    @blp.errors(404)
    def get(self, space_id, document_id):
        """Get a document and its ingestion status"""
        return services.get(current_user, space_id, document_id)

    @blp.login_required
    @blp.response(204)
    @blp.errors(403, 404, 503)
    def delete(self, space_id, document_id):
        """Delete a document, its file, chunks and vectors (editor)"""
        services.delete(current_user, space_id, document_id)


# The original bytes are sent with the document's media type. A file is kept only when it
# sniffed as one of the supported types (services._store), so these are all a download can be.
# Its bytes are unchanged: a JSON document is whatever JSON the client uploaded.
_ORIGINAL_FILE = {media_type: {"schema": {} if media_type == JSON else {"type": "string", "format": "binary"}}
                  for media_type in sorted(SUPPORTED)}


@blp.route("/<uuid:space_id>/documents/<uuid:document_id>/file")
@blp.login_required
@blp.response(200, description="the original bytes, with the document's media type (`media_type`)")
@blp.doc(responses={200: {"content": _ORIGINAL_FILE, "headers": {"Content-Disposition": {
    "description": "`attachment` with the document's filename (`filename*`, UTF-8; `filename`, an ASCII fallback)",
    "required": True, "schema": {"type": "string"}}}}})
@blp.errors(404)
def document_file(space_id, document_id):
    """Download the original file"""
    doc, data = services.original(current_user, space_id, document_id)
    ascii_name = doc.filename.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    headers = {
        "Content-Type": doc.media_type,
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(doc.filename)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    return Response(data, 200, headers)


@blp.route("/<uuid:space_id>/documents/<uuid:document_id>/reindex", methods=["POST"])
@blp.login_required
@blp.response(202, schemas.DocumentSchema)
@blp.errors(403, 404, 409, 503)
def reindex_document(space_id, document_id):
    """Parse, chunk and embed a document again (editor)"""
    return services.reindex(current_user, space_id, document_id)


@blp.route("/<uuid:space_id>/reindex")
class Reindex(MethodView):
    @blp.login_required
    @blp.response(202, schemas.ReindexSchema)
    @blp.errors(403, 404, 409, 503)
    def post(self, space_id):
        """Move the space to the server's current plugins, without a gap (editor)

        Every document is indexed again into a new index while the space keeps answering from
        the old one; when all are in, the space switches in one step. A failure leaves the old
        index in place. 409 `reindex_in_progress` while one runs.
        """
        return services.reindex_space(current_user, space_id)

    @blp.login_required
    @blp.response(200, schemas.ReindexSchema)
    @blp.errors(404)
    def get(self, space_id):
        """How the space's latest reindex stands"""
        return services.reindex_status(current_user, space_id)


@blp.route("/<uuid:space_id>/chunks/<uuid:chunk_id>")
@blp.login_required
@blp.response(200, schemas.ChunkSchema)
@blp.errors(404)
def get_chunk(space_id, chunk_id):
    """Get a chunk: the passage a citation points at"""
    return services.chunk(current_user, space_id, chunk_id)
