"""`contrastive bench serve` (serve.py, over the load generator in loadgen.py) and
`contrastive bench search` (search.py)."""
