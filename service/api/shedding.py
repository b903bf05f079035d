"""Overload shed before a request is read: the embedding routes answer 503 `overloaded` at
the edge of the app when the model's queue would refuse even one more item.

Why at the edge: a refusal after the request has been read costs what the request costs
up to its admission (the body received and parsed, JSON or multipart, FastAPI's routing,
dependencies and validation): a few milliseconds of the event loop each. At 4x capacity
three requests in four are refused, and on a small machine that work alone can take the
whole event loop, so that every request, refused or not, first waits in line behind it
(seconds, measured by `contrastive bench overload`). Refused here, it costs the headers.

Exact, never early: a request needs at least one item of a modality its route embeds, and
a job of more items would be refused whenever one item is (Batcher.check); so a request
refused here would have been refused after reading it. Only with one model served: with
several, the body names the model, and nothing can be known before reading it.
"""

from __future__ import annotations

from contrastkit.service.domain_errors import CapacityError
from contrastkit.service.runtime.served import LoadedModel, ServedModels
from contrastkit.training.encoders import IMAGE, TEXT

# What a request to each route embeds at least one item of: any one of the modalities
# (/v1/embeddings holds texts, images or both: it is refused only when neither has room).
# Classify embeds its labels only when their classifier is not cached: its images decide.
NEEDS: dict[str, tuple[str, ...]] = {
    "/v1/embed/text": (TEXT,),
    "/v1/embed/image": (IMAGE,),
    "/v1/classify": (IMAGE,),
    "/v1/embeddings": (TEXT, IMAGE),
}


def early_refusal(models: ServedModels, path: str) -> CapacityError | None:
    """The 503 a POST to `path` gets before it is read, or None to read it."""
    needs = NEEDS.get(path)
    if needs is None or len(models) != 1:
        return None
    model = models.default.loaded
    if model is None:  # loading: the route answers model_not_ready
        return None
    refusals = []
    for modality in needs:
        if modality not in model.encoder.capabilities:
            continue  # the route answers missing_capability
        try:
            _refuse_when_full(model, modality)
        except CapacityError as e:
            refusals.append(e)
        else:
            return None  # room for this modality: the request may need only it
    return refusals[0] if refusals else None


def _refuse_when_full(model: LoadedModel, modality: str) -> None:
    if modality == IMAGE:
        model.images.refuse_when_full()
    else:
        model.texts.refuse_when_full()
