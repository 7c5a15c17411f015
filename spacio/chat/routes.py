"""Asking: semantic search, stateless questions, chats with history, conversations."""

from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt_identity

from spacio.chat import schemas, services, sse
from spacio.extensions import db
from spacio.http import Blueprint, paginate

blp = Blueprint("chat", __name__, url_prefix="/api/v1/spaces",
                description="Asking: semantic search, questions, chats and conversations")

EVENT_STREAM = (
    "The whole answer as JSON; with `Accept: text/event-stream`, Server-Sent Events instead, each "
    "`event: <type>\\ndata: <json>\\n\\n`, in this order: `start` `{conversation_id, message_id}` (the "
    "answer's message id); `citations` `[citation, ...]` (the passages offered to the generator, possibly "
    "none); `delta` `{text}` one or more; `end` `{message_id, grounded, usage}`. A failure after the stream "
    "started sends `error` with the one error body and ends the stream; the part written so far is stored "
    "as `interrupted`, as it is when the client disconnects."
)


def asker():
    return "user:" + get_jwt_identity()


@blp.route("/<uuid:space_id>/search")
class Search(MethodView):
    @blp.login_required
    @blp.arguments(schemas.SearchSchema)
    @blp.response(200, schemas.SearchResultSchema)
    @blp.errors(404, 409, 502, 503)
    def post(self, data, space_id):
        """Ranked passages for a query, best first; no generation"""
        return services.search(current_user, space_id, data["query"], data.get("top_k"), data["mode"])


@blp.route("/<uuid:space_id>/query")
class Query(MethodView):
    @blp.login_required
    @blp.limit("ASK_RATE_LIMIT", key_func=asker)
    @blp.arguments(schemas.QuerySchema)
    @blp.response(200, schemas.AnswerSchema)
    @blp.errors(404, 409, 502, 503)
    def post(self, data, space_id):
        """Ask a question: a cited answer from the space's documents, without history

        `grounded: false` when nothing relevant enough was found; the answer then says so
        and cites nothing. Each `[n]` in the answer refers to the citation with that `n`."""
        return services.query(current_user, space_id, data["question"], data.get("top_k"))


@blp.route("/<uuid:space_id>/chat")
class Chat(MethodView):
    @blp.login_required
    @blp.limit("ASK_RATE_LIMIT", key_func=asker)
    @blp.arguments(schemas.ChatSchema)
    @blp.response(200, schemas.ChatResultSchema, description=EVENT_STREAM)
    @blp.alt_response(200, schema={"type": "string"}, content_type=sse.MEDIA_TYPE, success=True,
                      description=EVENT_STREAM)
    @blp.errors(404, 409, 502, 503)
    def post(self, data, space_id):
        """Chat: answer a message with the conversation's history, streamed or whole

        Without `conversation_id` a new conversation starts, titled after the message. The
        message is stored before the answer is generated, the answer (with the passages it
        cites and its usage) after. Send `Accept: text/event-stream` for the answer as it is
        written (Server-Sent Events; read it with `fetch()`)."""
        pending = services.start_chat(current_user, space_id, data["message"], data.get("conversation_id"))
        if sse.wanted(request):
            return sse.response(current_app._get_current_object(), pending)
        return services.answer_chat(pending)


@blp.route("/<uuid:space_id>/conversations")
class Conversations(MethodView):
    @blp.login_required
    @blp.arguments(schemas.ConversationListArgsSchema, location="query")
    @blp.response(200, schemas.ConversationSchema(many=True))
    @blp.paginate()
    @blp.errors(403, 404)
    def get(self, args, space_id, pagination_parameters):
        """List your conversations, latest activity first; `?scope=all` (owner): everyone's, grouped by user"""
        statement = services.conversations_of(current_user, space_id, args["scope"])
        return paginate(statement, pagination_parameters, db.session)


@blp.route("/<uuid:space_id>/conversations/<uuid:conversation_id>")
class ConversationById(MethodView):
    @blp.login_required
    @blp.arguments(schemas.ConversationUpdateSchema)
    @blp.response(200, schemas.ConversationSchema)
    @blp.errors(404)
    def patch(self, data, space_id, conversation_id):
        """Rename one of your conversations"""
        return services.rename(current_user, space_id, conversation_id, data["title"])

    @blp.login_required
    @blp.response(204)
    @blp.errors(404)
    def delete(self, space_id, conversation_id):
        """Delete one of your conversations and its messages"""
        services.delete(current_user, space_id, conversation_id)


@blp.route("/<uuid:space_id>/conversations/<uuid:conversation_id>/messages")
class Messages(MethodView):
    @blp.login_required
    @blp.response(200, schemas.MessageSchema(many=True))
    @blp.paginate()
    @blp.errors(404)
    def get(self, space_id, conversation_id, pagination_parameters):
        """List a conversation's messages, oldest first (yours; the owner may read any of the space)"""
        statement = services.messages_of(current_user, space_id, conversation_id)
        return paginate(statement, pagination_parameters, db.session)
