"""Checks on request contents that pydantic cannot express; each failure is a clear 422."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import ApiError
from service.settings import Settings


def _bad(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def check_texts(texts: Sequence[str], s: Settings, what: str = "texts") -> list[str]:
    """Non-empty list, within the count limit; each text non-empty, valid Unicode, no NUL."""
    if not texts:
        raise _bad("empty_input", f"'{what}' is empty: send at least one text")
    if len(texts) > s.max_texts:
        raise _bad(
            "too_many_items", f"{len(texts)} {what} in one request; the limit is {s.max_texts}"
        )
    for i, t in enumerate(texts):
        check_text(t, s, f"{what}[{i}]")
    return list(texts)


def check_text(t: str, s: Settings, where: str) -> None:
    if not t.strip():
        raise _bad("empty_text", f"{where} is empty or blank")
    if len(t) > s.max_text_chars:
        raise _bad(
            "text_too_long", f"{where} has {len(t)} characters; the limit is {s.max_text_chars}"
        )
    if "\x00" in t:
        raise _bad("invalid_text", f"{where} contains a NUL character (U+0000); remove it")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(
            "invalid_text", f"{where} is not valid Unicode (a lone surrogate at position {e.start})"
        ) from e


def check_image_count(n: int, s: Settings) -> None:
    if n == 0:
        raise _bad("empty_input", "no images: send at least one")
    if n > s.max_images:
        raise _bad("too_many_items", f"{n} images in one request; the limit is {s.max_images}")


def check_labels(labels: Sequence[str], s: Settings) -> list[str]:
    if not labels:
        raise _bad("empty_input", "'labels' is empty: send at least one label")
    if len(labels) > s.max_labels:
        raise _bad("too_many_labels", f"{len(labels)} labels; the limit is {s.max_labels}")
    for i, label in enumerate(labels):
        check_text(label, s, f"labels[{i}]")
    if len(set(labels)) != len(labels):
        raise _bad("duplicate_labels", "'labels' holds duplicates; each label once")
    return list(labels)


def check_templates(templates: Sequence[str], s: Settings) -> list[str]:
    if not templates:
        raise _bad("empty_input", "'templates' is empty: omit it for the default set")
    if len(templates) > s.max_templates:
        raise _bad(
            "too_many_templates", f"{len(templates)} templates; the limit is {s.max_templates}"
        )
    for i, t in enumerate(templates):
        check_text(t, s, f"templates[{i}]")
        if "{}" not in t:
            raise _bad(
                "invalid_template",
                f"templates[{i}] {t!r} has no '{{}}' where the label goes, "
                "e.g. 'a photo of a {}.'",
            )
    return list(templates)
