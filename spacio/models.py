"""Every model, imported in one place so the metadata (Alembic, create_all) is complete."""

from spacio.auth.models import AuthSession, PasswordReset, User
from spacio.invites.models import Invite
from spacio.mail import OutboxMessage
from spacio.spaces.models import Membership, Space

__all__ = ["AuthSession", "Invite", "Membership", "OutboxMessage", "PasswordReset", "Space", "User"]
