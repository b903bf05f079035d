"""Token-id inputs of POST /v1/embeddings: OpenAI's API takes `input` as token ids too, and
LangChain's OpenAIEmbeddings sends nothing else by default (check_embedding_ctx_length=True:
it tokenizes each text with tiktoken, splits it into chunks of at most 8191 ids and posts
the chunks as arrays of ids).

Which vocabulary the ids belong to is not in the request, so it is settled the way the
client settled it: LangChain asks tiktoken for the encoding of `tiktoken_model_name or
model` and falls back to cl100k_base for a model tiktoken does not know (all of ours), and
cl100k_base is also the encoding of every OpenAI embedding model. The ids are decoded with
tiktoken (the optional `openai` extra) in that encoding, or in the one the request names in
`token_encoding`, and the text they stand for is embedded like any other.

They are never read as ids of the served model's own tokenizer (MiniLM's WordPiece,
open_clip's BPE): nothing in a request says they are, and tiktoken ids read that way give
an embedding of unrelated words without any error (what servers that pass ids straight to
their model answer LangChain). When the ids cannot be decoded correctly (no tiktoken, the
encoding's vocabulary cannot be loaded, an id outside it, bytes that are not UTF-8 text),
the answer is a 422 that says which client setting sends strings instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from contrastkit.service.api.request_checks import bad, check_count, check_text
from contrastkit.service.domain_errors import RequestError
from contrastkit.service.schemas.embeddings import OpenAIInput, TokenIds
from contrastkit.service.settings import Settings

log = logging.getLogger("contrastive.service")

# LangChain's fallback for a model name tiktoken does not know, and OpenAI's embedding
# models' own encoding.
DEFAULT_ENCODING = "cl100k_base"

# What a client can change so that it sends texts, which any server reads.
SEND_STRINGS = (
    "send the texts as strings instead (LangChain's OpenAIEmbeddings: "
    "check_embedding_ctx_length=False; the OpenAI client: pass strings as `input`)"
)

# Requests with more ids are decoded in a thread, off the event loop: about 0.07 us an id
# (5 ms for this many; a 32 MiB body of ids, some 6 million, would hold the loop 0.4 s).
INLINE_IDS = 65_536

# A vocabulary that failed to load (no network to fetch it, say) is not tried again for
# this long: every request would otherwise wait for the same failure.
RETRY_LOAD_AFTER_S = 60.0


class Vocabulary(Protocol):
    """What is read of a tiktoken Encoding."""

    name: str

    @property
    def n_vocab(self) -> int: ...

    def decode_bytes(self, tokens: Sequence[int]) -> bytes: ...

    def decode_single_token_bytes(self, token: int) -> bytes: ...


def token_arrays(value: OpenAIInput) -> list[tuple[str, list[int]]] | None:
    """`input`'s token-id arrays as (where, ids), one for a flat array of ids, or None when
    it holds strings or objects. `where` names the array in messages: "input" (the flat
    array) or "input[i]"."""
    if isinstance(value, TokenIds):
        return [("input", value.root)]
    if isinstance(value, list) and value and isinstance(value[0], TokenIds):
        return [
            (f"input[{i}]", ids.root) for i, ids in enumerate(value) if isinstance(ids, TokenIds)
        ]
    return None


def check_token_arrays(arrays: Sequence[tuple[str, list[int]]], s: Settings) -> None:
    """What can be checked without the vocabulary: the count of arrays (as for strings)
    and that none is empty."""
    check_count(len(arrays), s.max_texts, "input", "'input' is empty: send at least one input")
    for where, ids in arrays:
        if not ids:
            raise bad("empty_text", f"{where} is an empty array of token ids")


def encoding_name(requested: str | None, model: str) -> str:
    """The encoding the ids were made with: the one the request names, else the one
    LangChain picks for `model` (tiktoken's for an OpenAI model name, else cl100k_base)."""
    if requested is not None:
        return requested
    try:
        import tiktoken
    except ImportError:
        return DEFAULT_ENCODING
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


async def decode_token_arrays(
    arrays: Sequence[tuple[str, list[int]]], encoding: str, s: Settings
) -> list[str]:
    """Each array of ids -> the text it stands for in `encoding`, checked like a text that
    came as a string (length, blank, NUL). Refused: `tokens_not_supported` (no tiktoken, or
    the vocabulary cannot be loaded), `invalid_tokens` (an id outside the vocabulary, or
    bytes that are not UTF-8 text)."""
    vocab = _loaded.get(encoding)
    if vocab is None:
        vocab = await asyncio.to_thread(_load, encoding)
    if sum(len(ids) for _, ids in arrays) <= INLINE_IDS:
        return _decode_all(arrays, vocab, s)
    return await asyncio.to_thread(_decode_all, arrays, vocab, s)


def _decode_all(
    arrays: Sequence[tuple[str, list[int]]], vocab: Vocabulary, s: Settings
) -> list[str]:
    texts = []
    for where, ids in arrays:
        text = decode(ids, vocab, where)
        check_text(text, s, f"{where} (decoded from its token ids)")
        texts.append(text)
    return texts


def decode(ids: Sequence[int], vocab: Vocabulary, where: str) -> str:
    """Non-empty `ids` -> their text in `vocab`, or `invalid_tokens` naming the first bad id
    (its position in `where`)."""
    if min(ids) < 0 or max(ids) >= vocab.n_vocab:  # C-speed scans; the loop only to report
        at = next(j for j, t in enumerate(ids) if not 0 <= t < vocab.n_vocab)
        raise _not_in_vocabulary(where, at, ids[at], vocab)
    try:
        data = vocab.decode_bytes(ids)
    except KeyError:  # an id in range that the vocabulary leaves unused (tiktoken's gaps)
        at = next(j for j, t in enumerate(ids) if not _known(vocab, t))
        raise _not_in_vocabulary(where, at, ids[at], vocab) from None
    text = utf8_text(data)
    if text is None:
        raise RequestError(
            "invalid_tokens",
            f"{where} decodes to bytes that are not UTF-8 text in {vocab.name!r}: the ids "
            f"were made with another tokenizer? Name its encoding in 'token_encoding', or "
            f"{SEND_STRINGS}",
            {"encoding": vocab.name},
        )
    return text


def utf8_text(data: bytes) -> str | None:
    """`data` as text, or None when it is not UTF-8. A character cut at either end is left
    out: LangChain splits a long text's ids into chunks wherever the 8191st id falls, so a
    chunk may start with the last bytes of a character and end with the first ones of the
    next, and those bytes alone are no text. Anywhere else, bytes that are not UTF-8 mean
    ids from another vocabulary."""
    start = 0  # continuation bytes (10xxxxxx) of a character that began in the last chunk
    while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
        start += 1
    body = data[start:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":  # only ever at the very end
            return body[: e.start].decode("utf-8")
        return None


def _known(vocab: Vocabulary, token: int) -> bool:
    try:
        vocab.decode_single_token_bytes(token)
    except KeyError:
        return False
    return True


def _not_in_vocabulary(where: str, at: int, token: int, vocab: Vocabulary) -> RequestError:
    # JSON allows any integer; the answer (orjson) writes 64 bits at most, so a larger one
    # is shown as text, cut short.
    shown: int | str = token if -(2**63) <= token < 2**63 else f"{str(token)[:24]}..."
    detail: dict[str, Any] = {"encoding": vocab.name, "position": at, "token": shown}
    return RequestError(
        "invalid_tokens",
        f"{where}[{at}] = {shown} is not a token id of {vocab.name!r} (its ids are below "
        f"{vocab.n_vocab}): were the ids made with another tokenizer? Name its encoding in "
        f"'token_encoding', or {SEND_STRINGS}",
        detail,
    )


# -- the vocabularies ---------------------------------------------------------------------
# tiktoken fetches a vocabulary file on first use (its cache: TIKTOKEN_CACHE_DIR), so a
# load runs in a thread, once: later requests find it here.
_loaded: dict[str, Vocabulary] = {}
_failed: dict[str, tuple[float, str]] = {}  # encoding -> (when, why), see RETRY_LOAD_AFTER_S
_loading = threading.Lock()


def _load(name: str) -> Vocabulary:
    """tiktoken's encoding `name`: `tokens_not_supported` without tiktoken or when its
    vocabulary cannot be loaded, `invalid_request` for a name tiktoken does not have."""
    try:
        import tiktoken
    except ImportError:
        raise _unsupported(
            name,
            "which needs the optional 'tiktoken' package (the server's `openai` extra), "
            "not installed here",
        ) from None
    if name not in tiktoken.list_encoding_names():
        raise bad(
            "invalid_request",
            f"token_encoding {name!r} is not a tiktoken encoding; it has "
            + ", ".join(tiktoken.list_encoding_names()),
        )
    with _loading:
        if name in _loaded:
            return _loaded[name]
        failed = _failed.get(name)
        if failed is not None and time.monotonic() - failed[0] < RETRY_LOAD_AFTER_S:
            raise _unsupported(name, failed[1])
        try:
            vocab: Vocabulary = tiktoken.get_encoding(name)
        except Exception as e:  # a fetch without network, a corrupt cached file, ...
            why = f"whose vocabulary file this server cannot load ({type(e).__name__})"
            _failed[name] = (time.monotonic(), why)
            log.warning(
                "token-id inputs are refused: tiktoken cannot load %r (%s); put its file in "
                "TIKTOKEN_CACHE_DIR (see the README, OpenAI-compatible embeddings)",
                name,
                e,
            )
            raise _unsupported(name, why) from e
        _loaded[name] = vocab
        return vocab


def _unsupported(name: str, why: str) -> RequestError:
    return RequestError(
        "tokens_not_supported",
        f"'input' holds token ids; this server reads them as tiktoken {name!r} ids, {why}: "
        f"{SEND_STRINGS}",
        {"encoding": name},
    )
