import marshmallow as ma

from spacio.chat.models import ROLES, STATUSES
from spacio.rag.retrieval import MODES
from spacio.schemas import Timestamp, Trimmed


class SearchSchema(ma.Schema):
    query = Trimmed(required=True, validate=ma.validate.Length(min=1, max=2000))
    top_k = ma.fields.Integer(strict=True, validate=ma.validate.Range(min=1, max=100),
                              metadata={"description": "hits to return; default: the space's top_k, else 10"})
    mode = ma.fields.String(load_default="hybrid", validate=ma.validate.OneOf(MODES),
                            metadata={"description": "hybrid (vectors and keywords, fused), vector or keyword"})


class HitSchema(ma.Schema):
    document_id = ma.fields.String()
    filename = ma.fields.String()
    chunk_id = ma.fields.String()
    page = ma.fields.Integer(allow_none=True, metadata={"description": "1-based; null for formats without pages"})
    text = ma.fields.String()
    score = ma.fields.Float(metadata={"description": "higher is better; comparable within one response only"})
    mode = ma.fields.String(metadata={
        "enum": list(MODES),
        "description": "the search that found it: the mode asked for, or vector where the space's vector store "
                       "has no keyword search"})


class SearchResultSchema(ma.Schema):
    hits = ma.fields.List(ma.fields.Nested(HitSchema), metadata={"description": "best first"})
    grounded = ma.fields.Boolean(metadata={"description": "false when nothing relevant enough was found"})
    mode = ma.fields.String(metadata={"enum": list(MODES), "description": "the search that ran (see the hits' mode)"})


# --------------------------------------------------------------------------- questions and chats

class Text(Trimmed):
    """A question: trimmed, line breaks and tabs allowed, no other control characters."""

    ALLOWED_CONTROLS = "\n\r\t"
    CONTROL_MESSAGE = "Control characters other than line breaks and tabs are not allowed."


class QuerySchema(ma.Schema):
    question = Text(required=True, validate=ma.validate.Length(min=1, max=4000))
    top_k = ma.fields.Integer(strict=True, validate=ma.validate.Range(min=1, max=100),
                              metadata={"description": "passages to retrieve; default: the space's top_k, else 10"})


class ChatSchema(ma.Schema):
    message = Text(required=True, validate=ma.validate.Length(min=1, max=4000))
    conversation_id = ma.fields.UUID(metadata={"description": "continue this conversation (yours, in this space); "
                                                              "omitted: start a new one"})


class CitationSchema(ma.Schema):
    n = ma.fields.Integer(metadata={"description": "the answer refers to this citation as [n]"})
    document_id = ma.fields.String()
    filename = ma.fields.String()
    chunk_id = ma.fields.String(metadata={"description": "GET /spaces/{space_id}/chunks/{chunk_id} has its passage"})
    page = ma.fields.Integer(allow_none=True, metadata={"description": "1-based; null for formats without pages"})
    snippet = ma.fields.String(metadata={"description": "plain text from the passage"})
    score = ma.fields.Float(metadata={"description": "retrieval score; higher is better"})


class TokenUsageSchema(ma.Schema):
    prompt_tokens = ma.fields.Integer()
    completion_tokens = ma.fields.Integer()
    embedding_tokens = ma.fields.Integer(metadata={"description": "the question's embedding"})
    estimated = ma.fields.Boolean(metadata={
        "description": "true when the generator's server reported no token counts and Spacio counted them"})


class AnswerSchema(ma.Schema):
    answer = ma.fields.String()
    citations = ma.fields.List(ma.fields.Nested(CitationSchema),
                               metadata={"description": "the passages the answer cites, by n"})
    grounded = ma.fields.Boolean(metadata={"description": "false: nothing relevant enough was found, and the "
                                                          "answer says so"})
    usage = ma.fields.Nested(TokenUsageSchema)


class ChatResultSchema(AnswerSchema):
    conversation_id = ma.fields.UUID()
    message_id = ma.fields.UUID(metadata={"description": "the assistant message holding this answer"})


# --------------------------------------------------------------------------- conversations

class UserRefSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    email = ma.fields.String()


class ConversationSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    title = ma.fields.String(dump_only=True)
    user = ma.fields.Nested(UserRefSchema, dump_only=True, metadata={"description": "whose conversation it is"})
    created_at = Timestamp()
    updated_at = Timestamp()
    message_count = ma.fields.Integer(dump_only=True)


class ConversationListArgsSchema(ma.Schema):
    scope = ma.fields.String(load_default="own", validate=ma.validate.OneOf(["own", "all"]),
                             metadata={"description": "own (default), or all: everyone's, grouped by user (owner)"})


class ConversationUpdateSchema(ma.Schema):
    title = Trimmed(required=True, validate=ma.validate.Length(min=1, max=200))


class MessageSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    role = ma.fields.String(dump_only=True, metadata={"enum": list(ROLES)})
    content = ma.fields.String(dump_only=True)
    citations = ma.fields.List(ma.fields.Nested(CitationSchema), dump_only=True,
                               metadata={"description": "answers: the passages the answer cites; questions: []"})
    grounded = ma.fields.Boolean(dump_only=True, allow_none=True, metadata={"description": "null for questions"})
    status = ma.fields.String(dump_only=True, metadata={
        "enum": list(STATUSES), "description": "interrupted: the stream stopped (a client left, the generator "
                                              "failed) and content is the part written until then"})
    usage = ma.fields.Nested(TokenUsageSchema, dump_only=True, allow_none=True,
                             metadata={"description": "answers only; null for questions"})
    created_at = Timestamp()
