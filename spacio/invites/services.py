"""Invitations: one per email, token mailed once and stored only as a hash."""

from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, select, update

from spacio import mail, security
from spacio.auth.models import User
from spacio.db import utcnow
from spacio.errors import Conflict, Forbidden, Gone, NotFound
from spacio.extensions import db
from spacio.invites.models import Invite
from spacio.spaces import services as spaces
from spacio.spaces.models import Membership, Space


def invite(user, space_id, emails, role, expires_in_hours=None):
    """Invite each distinct email; members get an ``already_member`` entry instead.

    Inviting an email again revokes its earlier pending invite (its link stops working).
    Mails go out before the commit: if one cannot be sent, nothing is kept (503)."""
    space = spaces.access(user, space_id, spaces.MANAGE)
    now = utcnow()
    hours = expires_in_hours or current_app.config["INVITE_EXPIRES_HOURS"]
    members = set(db.session.scalars(
        select(User.email).join(Membership, Membership.user_id == User.id).where(Membership.space_id == space.id)
    ))
    entries = []
    for email in dict.fromkeys(emails):
        if email in members:
            entries.append({"id": None, "email": email, "role": None, "status": "already_member",
                            "expires_at": None, "created_at": None, "invited_by_id": None})
            continue
        db.session.execute(
            update(Invite).where(_status_is("pending", now), Invite.space_id == space.id, Invite.email == email)
            .values(revoked_at=now).execution_options(synchronize_session=False)
        )
        token = security.new_token()
        entry = Invite(space_id=space.id, email=email, role=role, token_hash=security.token_hash(token),
                       invited_by_id=user.id, created_at=now, expires_at=now + timedelta(hours=hours))
        db.session.add(entry)
        _mail_invite(user, space, entry, token, hours)
        entry.status = "pending"
        entries.append(entry)
    db.session.commit()
    return entries


def _mail_invite(inviter, space, entry, token, hours):
    link = f"{current_app.config['FRONTEND_URL']}/join?token={token}"
    mail.send(
        entry.email,
        f"{inviter.name} invited you to “{space.name}” on Spacio",
        f"Hello,\n\n{inviter.name} ({inviter.email}) invited you to join the space “{space.name}” "
        f"on Spacio as {entry.role}.\n\nTo accept, open:\n\n{link}\n\n"
        f"Log in (or create an account) with this email address, {entry.email}. "
        f"The link works once and expires in {hours} hours.\n",
    )


def _status_is(status, now):
    pending = and_(Invite.accepted_at.is_(None), Invite.revoked_at.is_(None))
    return {
        "accepted": Invite.accepted_at.is_not(None),
        "revoked": and_(Invite.accepted_at.is_(None), Invite.revoked_at.is_not(None)),
        "expired": and_(pending, Invite.expires_at <= now),
        "pending": and_(pending, Invite.expires_at > now),
    }[status]


def invites_of(user, space_id, status=None):
    space = spaces.access(user, space_id, spaces.MANAGE)
    statement = select(Invite).where(Invite.space_id == space.id).order_by(Invite.created_at.desc(), Invite.email)
    if status:
        statement = statement.where(_status_is(status, utcnow()))
    return statement


def with_status(invites):
    now = utcnow()
    for entry in invites:
        entry.status = entry.status_at(now)
    return invites


def revoke(user, space_id, invite_id):
    space = spaces.access(user, space_id, spaces.MANAGE)
    entry = db.session.get(Invite, invite_id)
    if entry is None or entry.space_id != space.id:
        raise NotFound("Invite not found.", reason="invite_not_found")
    if entry.accepted_at is not None:
        raise Conflict("This invite was already accepted; remove the member instead.", reason="invite_used")
    if entry.revoked_at is None:
        entry.revoked_at = utcnow()
        db.session.commit()


def accept(user, token):
    """Join the space an invite is for. The invite must be pending and for this user's email;
    a wrong user gets 403 and the token stays usable for the right one."""
    entry = db.session.scalar(select(Invite).where(Invite.token_hash == security.token_hash(token)))
    if entry is None:
        raise NotFound("This invite link is not valid.", reason="invite_not_found")
    if entry.email != user.email:  # checked first: a stranger learns nothing about the invite
        raise Forbidden("This invite is for another email address.", reason="invite_not_for_you")
    now = utcnow()
    status = entry.status_at(now)
    if status != "pending":
        reason, message = {
            "accepted": ("invite_used", "This invite has already been used."),
            "revoked": ("invite_revoked", "This invite was revoked."),
            "expired": ("invite_expired", "This invite has expired; ask for a new one."),
        }[status]
        raise Gone(message, reason=reason)
    claimed = db.session.execute(
        update(Invite).where(Invite.id == entry.id, _status_is("pending", now))
        .values(accepted_at=now, accepted_by_id=user.id).execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # accepted or revoked concurrently
        db.session.rollback()
        raise Gone("This invite has already been used.", reason="invite_used")
    space = db.session.get(Space, entry.space_id)
    member = spaces.add_member(space, user.id, entry.role)
    db.session.commit()
    space.role = member.role
    return {"space": space, "role": member.role}
