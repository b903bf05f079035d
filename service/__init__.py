"""The contrastive embedding service: REST embeddings, zero-shot classification, search."""
