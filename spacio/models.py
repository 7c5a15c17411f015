"""Every model, imported in one place so the metadata (Alembic, create_all) is complete."""

from spacio.apikeys.models import ApiKey
from spacio.auth.models import AuthSession, PasswordReset, User
from spacio.chat.models import Conversation, Message
from spacio.documents.models import BuildDocument, Chunk, Document, DocumentFile, IndexBuild
from spacio.invites.models import Invite
from spacio.mail import OutboxMessage
from spacio.spaces.models import Membership, Space
from spacio.usage.models import UsageRecord

__all__ = ["ApiKey", "AuthSession", "BuildDocument", "Chunk", "Conversation", "Document", "DocumentFile",
           "IndexBuild", "Invite", "Membership", "Message", "OutboxMessage", "PasswordReset", "Space", "UsageRecord",
           "User"]
