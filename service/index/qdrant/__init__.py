"""Collections in Qdrant, behind the CollectionBackend interface
(contrastkit.service.index.backend).

Only the backend factory (contrastkit.service.index.factory) imports this package: QdrantConfig
(connection.py, which needs no qdrant-client) as it loads, the rest, and qdrant-client, only
when a Qdrant backend is opened.

With a Qdrant server the service keeps no collection state of its own: any number of
replicas can serve the same collections. qdrant-client's embedded local mode (a folder, or
memory) runs the same code offline, for tests and trials; it is exact brute force, pickles
points into its SQLite file, and is meant for small collections only.

How collections map onto Qdrant (prefix "contrastive" by default):

- collection NAME is the Qdrant collection "contrastive-NAME": cosine distance over the
  unit vectors, so a score is the inner product, as FAISS's on the same vectors;
- its model id, dimension, index spec and creation time are a point of the vectorless
  collection "contrastive_collections" (a sidecar, which any Qdrant version has, rather
  than per-collection metadata, which needs Qdrant >= 1.16). `create` makes the collection
  first and then its config; `drop` removes the config first. A crash between the two
  steps leaves a collection without its config, or a config without its collection: both
  are listed in `problems` and a `drop` of the name clears them;
- item id ID is the point uuid5(ID_NAMESPACE, ID) (stable across runs and replicas; the
  namespace must never change), and the payload is {"_id": ID, "meta": METADATA,
  "_keys": [METADATA's keys]}: user keys live under "meta", so none can collide with ours;
- a filter becomes a Qdrant filter on "meta.FIELD" ("$exists" tests "_keys", which is
  exact where Qdrant's is-empty test would also count null and []). Qdrant matches an
  array by any element and contrastkit.service.index.filters never does, so what comes back is
  checked once more with `Filter.matches`, fetching more until k hits pass. Payload
  indexes are created for the fields filtered on (keyword, float or bool, from the value).

IndexSpec: "flat" is exact search (no HNSW graph); every other kind is Qdrant's HNSW with
`m`, `ef_construction` and `ef_search` (IVF has no Qdrant counterpart and maps to HNSW).
The compressed kinds keep their meaning: "hnsw_sq8" adds Qdrant's int8 scalar
quantisation, "ivfpq" its product quantisation (x16); Qdrant rescores with the originals.

Modules: `connection` (QdrantConfig: where the collections live), `points` (how an item is
a point: ids and payload), `filters` (our filter language as Qdrant filters), `sidecar` (a
collection's stored config), `collection` (one collection), `backend` (all of them, and
Qdrant's errors as CollectionErrors).
"""
