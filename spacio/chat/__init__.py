"""Asking: semantic search, stateless questions, chats with history, conversations."""
