"""Checks on request contents that pydantic cannot express; each failure is a RequestError
(a 422, contrastkit.service.errors says)."""

from __future__ import annotations

from collections.abc import Sequence

from contrastkit.service.domain_errors import ErrorCode, RequestError
from contrastkit.service.index.items import unencodable_at  # one rule for texts and items alike
from contrastkit.service.settings import Settings


def bad(code: ErrorCode, message: str) -> RequestError:
    return RequestError(code, message)


def check_count(n: int, limit: int, what: str, empty: str | None = None) -> None:
    """1 <= n <= limit, else `empty_input` (message `empty`, or one naming `what`) or
    `too_many_items`. Every list a request sends is counted here."""
    if n == 0:
        raise bad("empty_input", empty or f"'{what}' is empty: send at least one")
    if n > limit:
        raise bad("too_many_items", f"{n} {what} in one request; the limit is {limit}")


def check_texts(texts: Sequence[str], s: Settings, what: str = "texts") -> list[str]:
    """Non-empty list, within the count limit; each text non-empty, valid Unicode, no NUL."""
    check_count(len(texts), s.max_texts, what, f"'{what}' is empty: send at least one text")
    for i, t in enumerate(texts):
        check_text(t, s, f"{what}[{i}]")
    return list(texts)


def check_text(t: str, s: Settings, where: str) -> None:
    if not t.strip():
        raise bad("empty_text", f"{where} is empty or blank")
    if len(t) > s.max_text_chars:
        raise bad(
            "text_too_long", f"{where} has {len(t)} characters; the limit is {s.max_text_chars}"
        )
    if "\x00" in t:
        raise bad("invalid_text", f"{where} contains a NUL character (U+0000); remove it")
    at = unencodable_at(t)
    if at is not None:
        raise bad(
            "invalid_text", f"{where} is not valid Unicode (a lone surrogate at position {at})"
        )


def check_image_count(n: int, s: Settings) -> None:
    check_count(n, s.max_images, "images", "no images: send at least one")


def check_labels(labels: Sequence[str], s: Settings) -> list[str]:
    if not labels:
        raise bad("empty_input", "'labels' is empty: send at least one label")
    if len(labels) > s.max_labels:
        raise bad("too_many_labels", f"{len(labels)} labels; the limit is {s.max_labels}")
    for i, label in enumerate(labels):
        check_text(label, s, f"labels[{i}]")
    if len(set(labels)) != len(labels):
        raise bad("duplicate_labels", "'labels' holds duplicates; each label once")
    return list(labels)


def check_templates(templates: Sequence[str], s: Settings) -> list[str]:
    if not templates:
        raise bad("empty_input", "'templates' is empty: omit it for the default set")
    if len(templates) > s.max_templates:
        raise bad(
            "too_many_templates", f"{len(templates)} templates; the limit is {s.max_templates}"
        )
    for i, t in enumerate(templates):
        check_text(t, s, f"templates[{i}]")
        if "{}" not in t:
            raise bad(
                "invalid_template",
                f"templates[{i}] {t!r} has no '{{}}' where the label goes, "
                "e.g. 'a photo of a {}.'",
            )
    return list(templates)


def check_classify_size(n_labels: int, n_templates: int, s: Settings) -> None:
    """labels x templates (the texts a classifier is made of) <= `max_classify_texts`, else
    `too_many_items` with the numbers: one request must not occupy the text model for
    minutes."""
    texts = n_labels * n_templates
    if texts > s.max_classify_texts:
        raise RequestError(
            "too_many_items",
            f"{n_labels} labels x {n_templates} templates = {texts} texts to embed; the limit "
            f"is {s.max_classify_texts}: send fewer labels or templates",
            {
                "labels": n_labels,
                "templates": n_templates,
                "texts": texts,
                "limit": s.max_classify_texts,
            },
        )
