"""A JSON response rendered by orjson: embeddings are numpy arrays, and orjson writes
them an order of magnitude faster than the standard library does lists of floats.

orjson writes NaN and infinity as `null`, so model output goes through `finite_output`
first: a broken model is an error answer, never a 200 with nulls in it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from contrastkit.service.domain_errors import ModelError

log = logging.getLogger("contrastive.service")


class FastJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def finite_output(values: Any, model_id: str) -> np.ndarray:
    """The model's output (a tensor or array) as a numpy array, or ModelError
    `model_output_invalid` when any value is NaN or infinite.

    That is the model's fault (broken weights, an fp16 overflow), not the request's, and
    retrying will not help: the status says so (contrastkit.service.errors), and the body says which
    rows, so that the operator can reproduce it.
    """
    arr = np.asarray(values.numpy() if hasattr(values, "numpy") else values)
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    bad_rows: Any = np.flatnonzero(~finite.reshape(len(arr), -1).all(axis=1)) if arr.ndim else []
    log.warning("model %s returned non-finite values (rows %s)", model_id, bad_rows[:16])
    raise ModelError(
        "model_output_invalid",
        f"model {model_id!r} returned NaN or infinite values for this input; nothing was "
        "answered or stored (a problem of the model or its weights: see the server log)",
        detail={"rows": [int(i) for i in bad_rows]},
    )
