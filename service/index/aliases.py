"""The rules of collection aliases, the same for every backend (contrastkit.service.index.backend).

An alias is a second name for a collection, switched atomically from one collection to
another: clients search "photos" while "photos-v1" is served, then "photos-v2", without
a request in between answering 404. The backends store them (the embedded store in a
file of its folder, contrastkit.service.index.embedded.aliases; Qdrant as its native aliases) and
call the checks below, so that both refuse exactly the same things:

- an alias is named as a collection is (check_name) and is never the name of a
  collection, served or refused: `get(name)` would not know which was meant
  ("alias_conflict"); a new collection may not take an alias's name either;
- an alias points to a collection that exists ("collection_not_found" otherwise; one
  refused as corrupt is answered through the alias as it is by name), never to another
  alias: resolving one takes one step;
- a collection an alias points to is not dropped ("collection_aliased", naming the
  aliases): point them elsewhere or remove them first, so an alias never dangles.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from contrastkit.service.index.types import CollectionError, check_name


def check_set(
    alias: str, name: str, collections: Collection[str], aliases: Mapping[str, str]
) -> None:
    """Whether `alias` may point to collection `name`, given the collections that exist
    (served or refused) and the aliases now."""
    check_name(alias)
    check_name(name)
    if alias in collections:
        raise CollectionError(
            "alias_conflict",
            f"{alias!r} is the name of a collection: an alias may not hide one",
        )
    if name in aliases:
        raise CollectionError(
            "collection_not_found",
            f"{name!r} is an alias (of {aliases[name]!r}), not a collection: point "
            f"{alias!r} at a collection",
        )
    if name not in collections:
        raise CollectionError("collection_not_found", f"no collection named {name!r}")


def check_new_collection(name: str, aliases: Mapping[str, str]) -> None:
    """A collection may not be created under an alias's name."""
    if name in aliases:
        raise CollectionError(
            "alias_conflict",
            f"{name!r} is an alias (of {aliases[name]!r}): a collection may not take its "
            "name; remove the alias first",
        )


def check_drop(name: str, aliases: Mapping[str, str]) -> None:
    """A collection may be dropped only when no alias points to it, and an alias is
    removed as an alias, never dropped as if it were its collection."""
    if name in aliases:
        raise CollectionError(
            "alias_conflict",
            f"{name!r} is an alias (of {aliases[name]!r}), not a collection: remove the "
            f"alias, or drop {aliases[name]!r} by its name",
        )
    pointing = sorted(a for a, target in aliases.items() if target == name)
    if pointing:
        names = ", ".join(repr(a) for a in pointing)
        raise CollectionError(
            "collection_aliased",
            f"collection {name!r} is pointed to by alias {names}: switch or remove the alias first",
            detail={"aliases": pointing},
        )


def check_remove(alias: str, aliases: Mapping[str, str]) -> str:
    """The collection `alias` points to; "alias_not_found" when it is no alias."""
    check_name(alias)
    if alias not in aliases:
        raise CollectionError("alias_not_found", f"no alias named {alias!r}")
    return aliases[alias]
