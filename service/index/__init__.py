"""Vector collections behind one interface, whatever engine stores them.

This folder holds what every engine shares: the interface (`backend`: CollectionBackend,
CollectionHandle), value types and errors (`types`), the filter language (`filters`),
durable file writes (`fsutil`), export/import on any backend (`transfer`), and the one
place that opens an engine (`factory`). The engines live below it: `embedded/` (FAISS and
our own log, the default) and `qdrant/` (a Qdrant server). Nothing here imports the web
framework or pydantic: the HTTP models of collections are in
contrastkit.service.schemas.collections.
"""
