"""The REST API's request and response models (pydantic; they also make the OpenAPI docs),
one module per group of endpoints: `embeddings`, `collections`, `admin`, `status` (errors,
health).
Only the API layer (contrastkit.service.api) imports them; the Python client has result types of its
own (contrastkit.service.client.types).
"""
