"""Spaces, members and the rules of who may do what (API.md)."""

import uuid

from sqlalchemy import case, literal, select

from spacio import auth
from spacio.db import utcnow
from spacio.errors import Conflict, Forbidden, Invalid, NotFound
from spacio.extensions import db
from spacio.rag import answering, pipeline
from spacio.spaces.models import ROLES, Membership, Space

# the least role an action needs
READ, WRITE, MANAGE = "viewer", "editor", "owner"


def outranks(role, other):
    return ROLES.index(role) > ROLES.index(other)


def access(user, space_id, needs=READ):
    """The space, with the caller's ``role`` on it, if the caller may do what ``needs`` allows.

    A non-member gets 404 whatever they ask (existence is not revealed); a member without
    the right gets 403. Through an API key the caller is the key's creator in the key's
    one space only (404 elsewhere), with the lesser of the key's role and the creator's.
    """
    key = _key_of(user)
    if key is not None and key.space_id != _as_uuid(space_id):
        raise NotFound("Space not found.", reason="space_not_found")
    row = db.session.execute(
        select(Space, Membership.role)
        .join(Membership, Membership.space_id == Space.id)
        .where(Space.id == space_id, Membership.user_id == user.id)
    ).first()
    if row is None:
        raise NotFound("Space not found.", reason="space_not_found")
    space, role = row
    if key is not None and outranks(role, key.role):
        role = key.role
    if outranks(needs, role):
        through = " (through an API key)" if key is not None else ""
        raise Forbidden(f"This needs the {needs} role in this space; you are {role}{through}.")
    space.role = role  # the caller's role, shown on the space
    return space


def _key_of(user):
    """The request's API key scope when it acts for ``user``, else None."""
    key = auth.api_key()
    return key if key is not None and key.user_id == user.id else None


def _as_uuid(value):
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def spaces_of(user):
    """A select() of the user's spaces as rows of the space's columns and the user's ``role``,
    newest first (through an API key: the key's space, with the key's role if lower). Rows,
    not ``Space`` objects: a list only reads them, and loading ORM objects cost more than
    the query (GET /spaces with 20 rows)."""
    key = _key_of(user)
    role = Membership.role
    if key is not None:
        role = case((Membership.role == "viewer", "viewer"), else_=literal(key.role))
    statement = (
        select(*Space.__table__.columns, role.label("role"))
        .join(Membership, Membership.space_id == Space.id)
        .where(Membership.user_id == user.id)
        .order_by(Space.created_at.desc(), Space.id)
    )
    return statement.where(Space.id == key.space_id) if key is not None else statement


def _check_settings(settings, changes):
    size, overlap = settings.get("chunk_size"), settings.get("chunk_overlap")
    if size is not None and overlap is not None and overlap >= size // 2:
        raise Invalid("chunk_overlap must be less than half of chunk_size.",
                      errors={"settings": {"chunk_overlap": ["Must be less than half of chunk_size."]}})
    if changes.get("generator"):  # one chosen now must work now; a kept one may have broken since
        problem = answering.generator_problem(changes["generator"])
        if problem:
            raise Invalid(problem, reason="generator_not_usable", errors={"settings": {"generator": [problem]}})


def _merge_settings(current, changes):
    merged = {**current, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def create(user, name, description, settings):
    changes, settings = settings, _merge_settings({}, settings)
    _check_settings(settings, changes)
    space = Space(name=name, description=description, owner_id=user.id, settings=settings,
                  pipeline=pipeline.describe_new_space())
    space.memberships.append(Membership(user_id=user.id, role="owner"))
    db.session.add(space)
    db.session.commit()
    space.role = "owner"
    return space


def update(user, space_id, changes):
    space = access(user, space_id, MANAGE)
    if "settings" in changes:
        asked = changes.pop("settings")
        settings = _merge_settings(space.settings or {}, asked)
        _check_settings(settings, asked)
        space.settings = settings
    for key, value in changes.items():
        setattr(space, key, value)
    db.session.commit()
    return space


def delete(user, space_id):
    """Delete the space and everything in it: members, invites, documents, files, chunks, vectors."""
    space = access(user, space_id, MANAGE)
    indexes = pipeline.forget_space(space)  # vectors first: if the store is down, nothing is lost
    db.session.delete(space)
    db.session.commit()
    pipeline.forget_deleted(indexes)  # and again: ingestion may have written some meanwhile


def members_of(space):
    return select(Membership).where(Membership.space_id == space.id).order_by(Membership.joined_at, Membership.user_id)


def _member(space, user_id):
    member = db.session.get(Membership, (space.id, user_id))
    if member is None:
        raise NotFound("That user is not a member of this space.", reason="member_not_found")
    return member


def change_role(user, space_id, member_id, role):
    space = access(user, space_id, MANAGE)
    member = _member(space, member_id)
    if member.role == "owner":
        raise Conflict("The owner's role cannot change; transfer ownership instead.", reason="owner_role_fixed")
    member.role = role
    db.session.commit()
    return member


def remove_member(user, space_id, member_id):
    """The owner removes a member, or a member leaves (removes themself)."""
    leaving = member_id == user.id
    space = access(user, space_id, READ if leaving else MANAGE)
    if leaving and _key_of(user) is not None:
        raise Forbidden("An API key cannot take its creator out of the space; log in to leave.",
                        reason="api_key_not_allowed")
    member = _member(space, member_id)
    if member.role == "owner":
        raise Conflict("The owner cannot leave; transfer ownership or delete the space.", reason="owner_cannot_leave")
    db.session.delete(member)
    db.session.commit()


def transfer(user, space_id, new_owner_id):
    space = access(user, space_id, MANAGE)
    if new_owner_id == user.id:
        raise Conflict("You already own this space.", reason="already_owner")
    target = _member(space, new_owner_id)
    db.session.get(Membership, (space.id, user.id)).role = "editor"
    target.role = "owner"
    space.owner_id = new_owner_id
    space.updated_at = utcnow()
    db.session.commit()
    space.role = "editor"
    return space


def add_member(space, user_id, role):
    """Make the user a member with ``role``, or raise their role to it; never lowers one."""
    member = db.session.get(Membership, (space.id, user_id))
    if member is None:
        member = Membership(space_id=space.id, user_id=user_id, role=role)
        db.session.add(member)
    elif outranks(role, member.role):
        member.role = role
    return member
