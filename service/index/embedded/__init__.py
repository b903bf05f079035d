"""The embedded collection store: FAISS (or torch) search over vectors kept durable by our
own write-ahead log and snapshots, in one folder that one process holds.

Layers, bottom up: the log (`wal`) and `snapshot` files (written with
contrastkit.service.index.fsutil), read back by `recovery` (or salvaged by `repair`); the search
indexes (`faiss_index`, `block_flat`, `torch_flat`, saved by `index_file`); one `collection`; the
folder of them (`store`, one process's while it holds `folder_lock`); and `backend`, which puts the
store behind the CollectionBackend interface. Outside this package only the backend factory
(contrastkit.service.index.factory), the repair command and the store's own benchmarks import it.
"""
