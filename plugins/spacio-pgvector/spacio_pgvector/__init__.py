"""Spacio vector store on PostgreSQL + pgvector (entry point ``pgvector`` in ``spacio.vector_stores``)."""

from spacio_pgvector.store import PgVectorStore, PgVectorStoreOptions

__all__ = ["PgVectorStore", "PgVectorStoreOptions"]
