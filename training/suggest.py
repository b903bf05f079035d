"""The closest of some choices to a mistyped word, for error messages ("did you mean").

Imports nothing heavy: the command line's flags (contrastkit.training.cli), setting keys
(contrastkit.training.config) and method names (contrastkit.training.catalog) all use it before
torch loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """ " (did you mean X?)" for the closest of `choices` to `word`, or "" if none is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
