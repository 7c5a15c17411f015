"""Pinecone vector store for Spacio: one index, one Pinecone namespace per space."""

from spacio_pinecone.store import PineconeOptions, PineconeVectorStore

__all__ = ["PineconeOptions", "PineconeVectorStore"]
