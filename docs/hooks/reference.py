"""MkDocs hook: the reference pages, generated from the code at every build.

The committed pages under docs/reference/ hold an introduction and a marker, an HTML
comment such as `<!-- reference: settings -->`; this hook replaces the marker with what
the code says now, so the published reference cannot go stale:

- `cli`: every command's `--help`, from the argparse parsers of `service/cli.py`'s table
  (built in this process, no subprocess per command);
- `settings`: a table of every field of `contrastkit.service.settings.Settings`;
- `http-api`: every operation and schema of the OpenAPI document that
  `contrastkit.service.app.create_app(...).openapi()` returns (no model is loaded), which is also
  published beside the page as `reference/openapi.json`.

The Python client's page uses mkdocstrings instead (`::: contrastkit.service.client...`).
Everything is computed once per process (mkdocs serve rebuilds reuse it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

MARKER = re.compile(r"^<!-- reference: ([\w-]+) -->$", re.M)
WIDTH = "100"  # argparse wraps --help at $COLUMNS


@contextlib.contextmanager
def _clean_environment() -> Iterator[None]:
    """No CONTRASTIVE_* variable of the machine that builds the docs leaks into them, and
    argparse wraps at a fixed width."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("CONTRASTIVE_")]:
        del os.environ[name]
    os.environ["COLUMNS"] = WIDTH
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _cell(text: object) -> str:
    """`text` fit for one cell of a Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --- the command line --------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """(the words of the command, its parser) for the parser and every subcommand, depth
    first in the table's order."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, [*path, name])


@functools.cache
def cli_markdown() -> str:
    from contrastkit.service.cli import build_parser

    with _clean_environment():
        parser = build_parser()  # argv None: every command's flags
        out = []
        for words, sub in _commands(parser, ["contrastive"]):
            level = "#" * min(len(words) + 1, 4)
            out.append(f"{level} {' '.join(words)}\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(out)


# --- the settings ------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(named) + (" (optional)" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])} (comma-separated)"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if value == []:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value:_}`".replace("_", ",")
    return f"`{value}`" if value != "" else '`""`'


@functools.cache
def settings_markdown() -> str:
    from contrastkit.service.commands.serve import add_arguments
    from contrastkit.service.settings import Settings

    serve = argparse.ArgumentParser()
    add_arguments(serve)
    flags = {a.dest: a.option_strings[0] for a in serve._actions if a.option_strings}
    rows = [
        "| setting | environment variable | `contrastive serve` flag | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        flag = f"`{flags[name]}`" if name in flags else "—"
        rows.append(
            f"| `{name}` | `CONTRASTIVE_{name.upper()}` | {flag} | {_type_name(field.annotation)}"
            f" | {_default(field)} | {_cell(field.description or '')} |"
        )
    return f"{len(Settings.model_fields)} settings.\n\n" + "\n".join(rows) + "\n"


# --- the HTTP API ------------------------------------------------------------------------


@functools.cache
def openapi_document() -> dict[str, Any]:
    from contrastkit.service.app import create_app
    from contrastkit.service.settings import Settings

    with _clean_environment():  # an admin key, so that the admin routes are documented
        app = create_app(Settings(admin_keys=["documentation"], collections_dir="unused"))
        document: dict[str, Any] = app.openapi()
    return document


def _anchor(schema: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", schema.lower()).strip("-")


def _schema_type(schema: dict[str, Any]) -> str:
    """A JSON Schema in a few words, with links to the named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            parts = [_schema_type(s) for s in schema[key]]
            return (" and " if key == "allOf" else " or ").join(dict.fromkeys(parts))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if kind == "string" and "format" in schema:
        return f"string ({schema['format']})"
    return str(kind)


LIMITS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)


def _code(text: str) -> str:
    """`text` as inline code, whatever backticks it holds."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if fence != "`" else f"`{text}`"


def _limits(schema: dict[str, Any]) -> str:
    """The schema's bounds, as code (a pattern's brackets are not Markdown)."""
    found = " ".join(_code(f"{k} {json.dumps(schema[k])}") for k in LIMITS if k in schema)
    return found.replace("|", "\\|")


def _content_types(body: dict[str, Any]) -> list[str]:
    return [f"`{kind}`: {_schema_type(c.get('schema', {}))}" for kind, c in body["content"].items()]


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    out = [f"### `{method.upper()} {path}`\n"]
    if op.get("summary"):
        out.append(f"**{op['summary']}.**" if not op["summary"].endswith(".") else op["summary"])
    if op.get("description"):
        out.append(op["description"].strip())
    security = op.get("security")
    if security is not None:
        needs = {} not in security
        out.append(
            "Needs `Authorization: Bearer KEY`."
            if needs
            else "A key is needed when the server has API keys."
        )
    params = op.get("parameters", [])
    if params:
        out.append("| parameter | in | required | type | description |\n|---|---|---|---|---|")
        out[-1] += "".join(
            f"\n| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
            f"{_schema_type(p.get('schema', {}))} | {_cell(p.get('description', ''))} |"
            for p in params
        )
    if "requestBody" in op:
        out.append("Request body: " + "; ".join(_content_types(op["requestBody"])) + ".")
    rows = ["| status | meaning | body |", "|---|---|---|"]
    for status, response in op.get("responses", {}).items():
        body = "; ".join(_content_types(response)) if response.get("content") else ""
        rows.append(f"| {status} | {_cell(response.get('description', ''))} | {body} |")
    out.append("\n".join(rows))
    return "\n\n".join(out) + "\n"


def _schema(name: str, schema: dict[str, Any]) -> str:
    out = [f"### {name} {{ #{_anchor(name)} }}\n"]
    if schema.get("description"):
        out.append(_cell(schema["description"]) + "\n")
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        out.append("| field | type | required | limits | description |\n|---|---|---|---|---|")
        for field, sub in properties.items():
            out.append(
                f"| `{field}` | {_schema_type(sub)} | {'yes' if field in required else 'no'} | "
                f"{_limits(sub)} | {_cell(sub.get('description', ''))} |"
            )
    else:
        out.append(f"Type: {_schema_type(schema)}.")
    return "\n".join(out) + "\n"


@functools.cache
def http_api_markdown() -> str:
    document = openapi_document()
    by_tag: dict[str, list[str]] = {}
    count = 0
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append(_operation(path, method, op))
            count += 1
    schemas = document.get("components", {}).get("schemas", {})
    out = [
        f"{document['info']['title']} {document['info']['version']}: {count} operations on "
        f"{len(document['paths'])} paths, {len(schemas)} schemas. The whole document: "
        "[openapi.json](openapi.json) (a running server serves it at `/openapi.json`).\n",
    ]
    for tag, ops in by_tag.items():
        out.append(f"## {tag.capitalize()}\n")
        out.extend(ops)
    out.append("## Schemas\n")
    out.extend(_schema(name, schemas[name]) for name in sorted(schemas))
    return "\n".join(out)


# --- the hook ----------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli_markdown,
    "settings": settings_markdown,
    "http-api": http_api_markdown,
}


@event_priority(100)  # before mkdocstrings' on_config, whose glob drops a path not yet made
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Make build/docs-path/contrastkit/{service,training} -> the repository's folders: the
    path mkdocstrings reads the Python client from (mkdocs.yml), under its import name."""
    from contrastkit.training.bench.checkout_path import checkout_path

    checkout_path(Path(config.config_file_path).parent / "build" / "docs-path")
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish the OpenAPI document beside the HTTP API page."""
    content = json.dumps(openapi_document(), indent=2)
    files.append(File.generated(config, "reference/openapi.json", content=content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each `<!-- reference: NAME -->` line with what its generator writes now."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: unknown reference marker {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(fill, markdown)
