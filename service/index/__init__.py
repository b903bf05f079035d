"""Persistent, crash-safe vector collections: FAISS for search, our own log for durability."""
