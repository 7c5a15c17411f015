"""Every model, imported in one place so the metadata (Alembic, create_all) is complete."""

from spacio.auth.models import AuthSession, PasswordReset, User
from spacio.documents.models import Chunk, Document, DocumentFile
from spacio.invites.models import Invite
from spacio.mail import OutboxMessage
from spacio.spaces.models import Membership, Space

__all__ = ["AuthSession", "Chunk", "Document", "DocumentFile", "Invite", "Membership", "OutboxMessage", "PasswordReset", "Space", "User"]
