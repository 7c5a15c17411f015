"""The rules of asking: who may ask what of which space, conversations and their messages.

An answer (ARCHITECTURE "Data flow"): authorize -> history -> retrieve -> store the
question (commit) -> release the database session -> generate (stream) -> store the answer,
its citations and usage in a short transaction. No pooled connection is held while a
generator works, however long it streams. ``start_chat`` does everything up to the release
and returns a ``Pending`` made of ids and plain values; ``finish_chat`` is the short
transaction at the end.

Citations: the ``citations`` event of a stream lists every passage offered to the
generator (numbered as the answer cites them); a stored answer, a chat's JSON reply and a
query's reply hold only the passages the final answer cites, with the same numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from typing import Iterator

from flask import current_app
from sqlalchemy import func, select, update

from spacio.auth.models import User
from spacio.chat.memory import memory
from spacio.chat.models import Conversation, Message
from spacio.db import hold_owners, utcnow
from spacio.errors import NotFound
from spacio.extensions import db
from spacio.rag import answering, contracts, retrieval
from spacio.spaces.services import MANAGE, READ, access
from spacio.usage import services as usage

log = logging.getLogger(__name__)

TITLE_LENGTH = 80


def top_k_of(space, asked=None):
    return int(asked or (space.settings or {}).get("top_k") or current_app.config["SEARCH_TOP_K"])


def search(user, space_id, query, top_k=None, mode="hybrid"):
    space = access(user, space_id, READ)
    found = retrieval.retrieve(space, query, top_k=top_k_of(space, top_k), mode=mode)
    usage.record(user.id, space.id, "search", embedding_tokens=found.embedding_tokens)
    return found


# --------------------------------------------------------------------------- generation

class Generation:
    """One answer being generated: the text so far and the usage the generator reported.

    ``pieces()`` yields the text as it comes; closing it (a client that left) closes the
    generator's stream too, so a remote model stops generating."""

    def __init__(self, prepared):
        self.prepared = prepared
        self.parts: list[str] = []
        self.usage = contracts.Usage()

    def pieces(self) -> Iterator[str]:
        stream = answering.stream(self.prepared)
        try:
            for item in stream:
                if isinstance(item, contracts.Usage):
                    self.usage = item
                elif item:
                    self.parts.append(item)
                    yield item
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def run(self) -> str:
        for _ in self.pieces():
            pass
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cited(self) -> list[dict]:
        """The offered passages the answer refers to, as stored and returned."""
        if not self.text:
            return []
        return [citation_dict(c) for c in answering.cited(self.text, self.prepared.citations)]


def citation_dict(citation) -> dict:
    return citation.to_dict()


def usage_dict(generated: contracts.Usage, embedding_tokens: int) -> dict:
    return {"prompt_tokens": int(generated.prompt_tokens), "completion_tokens": int(generated.completion_tokens),
            "embedding_tokens": int(embedding_tokens), "estimated": bool(generated.estimated)}


def query(user, space_id, question, top_k=None):
    """A stateless question: retrieve, generate, record the usage; no history, nothing stored."""
    space = access(user, space_id, READ)
    found = retrieval.retrieve(space, question, top_k=top_k_of(space, top_k))
    prepared = answering.prepare(space, question, found, ())
    user_id, space_id = user.id, space.id
    db.session.remove()  # no pooled connection while the generator works
    generation = Generation(prepared)
    try:
        generation.run()
    finally:  # a failed generation still spent the question's embedding
        usage.record(user_id, space_id, "query", prompt_tokens=generation.usage.prompt_tokens,
                     completion_tokens=generation.usage.completion_tokens,
                     embedding_tokens=found.embedding_tokens, estimated=generation.usage.estimated)
    return {"answer": generation.text, "citations": generation.cited(), "grounded": prepared.grounded,
            "usage": usage_dict(generation.usage, found.embedding_tokens)}


# --------------------------------------------------------------------------- chats

@dataclasses.dataclass(frozen=True)
class Pending:
    """A chat turn whose question is stored and whose answer is to come. Ids and plain
    values only: the database session that loaded the space is gone."""

    user_id: uuid.UUID
    space_id: uuid.UUID
    conversation_id: uuid.UUID
    message_id: uuid.UUID  # the answer's id, known before it exists (the stream's `start` event)
    prepared: answering.Prepared
    embedding_tokens: int

    @property
    def grounded(self) -> bool:
        return bool(self.prepared.grounded)

    def offered(self) -> list[dict]:
        return [citation_dict(c) for c in self.prepared.citations]


def start_chat(user, space_id, message, conversation_id=None) -> Pending:
    """Everything before the answer: authorize, history, retrieval, the question stored.
    Raises the ordinary HTTP errors (404, 409, 502, 503) before anything is stored."""
    space = access(user, space_id, READ)
    conversation = own_conversation(user, space, conversation_id) if conversation_id else None
    past = history(conversation) if conversation is not None else []
    found = retrieval.retrieve(space, message, top_k=top_k_of(space))
    prepared = answering.prepare(space, message, found, past)
    if conversation is None:
        conversation = Conversation(space_id=space.id, user_id=user.id, title=title_of(message), message_count=0)
        db.session.add(conversation)
        db.session.flush()
    seq = _next_seq(conversation.id)
    db.session.add(Message(conversation_id=conversation.id, seq=seq, role="user", content=message, citations=[],
                           status="complete"))
    pending = Pending(user_id=user.id, space_id=space.id, conversation_id=conversation.id, message_id=uuid.uuid4(),
                      prepared=prepared, embedding_tokens=found.embedding_tokens)
    db.session.commit()
    _remember(pending.conversation_id, seq, "user", message)
    db.session.remove()  # release the connection before the answer streams
    return pending


def answer_chat(pending: Pending) -> dict:
    """Generate the whole answer and store it (the JSON reply of /chat)."""
    generation = Generation(pending.prepared)
    try:
        generation.run()
    except Exception:
        finish_chat(pending, generation, "interrupted")
        raise
    finish_chat(pending, generation, "complete")
    return {"conversation_id": pending.conversation_id, "message_id": pending.message_id,
            "answer": generation.text, "citations": generation.cited(), "grounded": pending.grounded,
            "usage": usage_dict(generation.usage, pending.embedding_tokens)}


def finish_chat(pending: Pending, generation: Generation, status: str) -> None:
    """Store the answer (complete, or the part written before it stopped) with its cited
    passages and usage, and record the request's usage: one short transaction.

    If the conversation was deleted while the answer streamed, only the usage is kept;
    if the whole space was, nothing."""
    text, spent = generation.text, generation.usage
    try:
        space_alive = hold_owners(pending.user_id, pending.space_id)
        seq = _next_seq(pending.conversation_id)
        if seq is not None:
            db.session.add(Message(
                id=pending.message_id, conversation_id=pending.conversation_id, seq=seq, role="assistant",
                content=text, citations=generation.cited(), grounded=pending.grounded, status=status,
                prompt_tokens=spent.prompt_tokens, completion_tokens=spent.completion_tokens,
                embedding_tokens=pending.embedding_tokens, usage_estimated=spent.estimated))
        if seq is not None or space_alive:
            usage.add(pending.user_id, pending.space_id, "chat", prompt_tokens=spent.prompt_tokens,
                      completion_tokens=spent.completion_tokens, embedding_tokens=pending.embedding_tokens,
                      estimated=spent.estimated)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    finally:
        db.session.remove()
    if seq is not None:
        _remember(pending.conversation_id, seq, "assistant", text)


def _next_seq(conversation_id):
    """Count one more message on the conversation and return its ``seq`` (None if the
    conversation is gone). The row update also orders concurrent turns."""
    return db.session.execute(
        update(Conversation).where(Conversation.id == conversation_id)
        .values(message_count=Conversation.message_count + 1, updated_at=utcnow())
        .returning(Conversation.message_count),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()


def title_of(message: str) -> str:
    """A conversation's first title: its first message on one line, cut at a word."""
    line = re.sub(r"\s+", " ", message).strip()
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[:TITLE_LENGTH - 1]
    if " " in cut[TITLE_LENGTH // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,.;:-") + "…"


# --------------------------------------------------------------------------- history

def history_size() -> int:
    return max(0, int(current_app.config["CHAT_HISTORY_TURNS"]))


def history(conversation) -> list[contracts.Turn]:
    """The conversation's last messages, oldest first, as the prompt's turns: from Redis
    when it holds exactly them, else from the database (which then refills Redis)."""
    size, newest = history_size(), int(conversation.message_count or 0)
    if not size or not newest:
        return []
    cache = memory()
    entries = cache.recent(conversation.id, size, newest) if cache is not None else None
    if entries is None:
        rows = db.session.execute(
            select(Message.seq, Message.role, Message.content).where(Message.conversation_id == conversation.id)
            .order_by(Message.seq.desc()).limit(size)).all()
        entries = [{"seq": seq, "role": role, "content": content} for seq, role, content in reversed(rows)]
        if cache is not None:
            cache.replace(conversation.id, entries)
    return [contracts.Turn(role=e["role"], content=e["content"]) for e in entries if e["content"]]


def _remember(conversation_id, seq, role, content):
    cache = memory()
    if cache is not None and history_size():
        cache.remember(conversation_id, {"seq": seq, "role": role, "content": content}, history_size())


# --------------------------------------------------------------------------- conversations

def _not_found():
    return NotFound("Conversation not found.", reason="conversation_not_found")


def own_conversation(user, space, conversation_id):
    """One of the caller's conversations in this space; anyone else's is not found."""
    found = db.session.get(Conversation, conversation_id)
    if found is None or found.space_id != space.id or found.user_id != user.id:
        raise _not_found()
    return found


def conversations_of(user, space_id, scope="own"):
    """A select() of the caller's conversations in the space, newest activity first; with
    ``scope="all"`` (owner) everyone's, grouped by user."""
    space = access(user, space_id, MANAGE if scope == "all" else READ)
    statement = select(Conversation).where(Conversation.space_id == space.id)
    if scope == "all":
        return (statement.join(User, User.id == Conversation.user_id)
                .order_by(func.lower(User.name), User.id, Conversation.updated_at.desc(), Conversation.id))
    return (statement.where(Conversation.user_id == user.id)
            .order_by(Conversation.updated_at.desc(), Conversation.id))


def messages_of(user, space_id, conversation_id):
    """A select() of a conversation's messages, oldest first. The caller's own, or any
    conversation of the space for its owner (who can list them with scope=all)."""
    space = access(user, space_id, READ)
    found = db.session.get(Conversation, conversation_id)
    if found is None or found.space_id != space.id or (found.user_id != user.id and space.role != "owner"):
        raise _not_found()
    return select(Message).where(Message.conversation_id == found.id).order_by(Message.seq)


def rename(user, space_id, conversation_id, title):
    conversation = own_conversation(user, access(user, space_id, READ), conversation_id)
    conversation.title = title
    db.session.commit()
    return conversation


def delete(user, space_id, conversation_id):
    conversation = own_conversation(user, access(user, space_id, READ), conversation_id)
    conversation_id = conversation.id
    db.session.delete(conversation)
    db.session.commit()
    cache = memory()
    if cache is not None:
        cache.forget(conversation_id)
