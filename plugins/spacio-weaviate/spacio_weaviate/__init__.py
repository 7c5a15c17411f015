"""Weaviate vector store for Spacio: one multi-tenant collection, one tenant per space."""

from spacio_weaviate.store import WeaviateOptions, WeaviateVectorStore, tenant_name

__all__ = ["WeaviateOptions", "WeaviateVectorStore", "tenant_name"]
