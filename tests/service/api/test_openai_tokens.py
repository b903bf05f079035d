"""Token ids on POST /v1/embeddings, as OpenAI's API takes them and LangChain's
OpenAIEmbeddings sends them: decoded with the encoding they were made with, then embedded
like the texts they stand for; a clear 422 whenever they cannot be decoded correctly.

No test fetches a real tiktoken vocabulary (that needs the network): the vocabularies are
made here, a byte-level one that needs no tiktoken at all, and a small real
`tiktoken.Encoding` where tiktoken is installed. A stand-in `tiktoken` module plays the
package for what the server asks of it (an encoding's name, a load that fails).
"""

from __future__ import annotations

import base64
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contrastkit.service.api import token_ids
from contrastkit.service.api.token_ids import decode, utf8_text
from contrastkit.service.domain_errors import RequestError
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder

Make = Callable[..., TestClient]
URL = "/v1/embeddings"
MODEL = "fake:test"


class ByteVocabulary:
    """A vocabulary made for the tests, in tiktoken's shape: ids 0-255 are single bytes,
    256-258 a few words, 300 a special token; 259-299 are unused (tiktoken's vocabularies
    have such gaps too), 301 and up are outside it."""

    WORDS = (b" red", b" cat", b"hello")

    def __init__(self, name: str = "cl100k_base") -> None:
        self.name = name
        self.tokens = {i: bytes([i]) for i in range(256)}
        self.tokens |= {256 + j: w for j, w in enumerate(self.WORDS)}
        self.tokens[300] = b"<|endoftext|>"

    @property
    def n_vocab(self) -> int:
        return 301

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.tokens[token]  # KeyError for an unused id, as tiktoken raises

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self.tokens[t] for t in tokens)

    def encode(self, text: str) -> list[int]:
        """Greedy: a word where one starts, else its bytes."""
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            word = next((w for w in self.WORDS if data.startswith(w, i)), None)
            if word is not None:
                ids.append(256 + self.WORDS.index(word))
                i += len(word)
            else:
                ids.append(data[i])
                i += 1
        return ids


VOCAB = ByteVocabulary()


@pytest.fixture(autouse=True)
def vocabularies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The server's loaded vocabularies: ours for cl100k_base, nothing failed before."""
    loaded: dict[str, Any] = {"cl100k_base": VOCAB}
    monkeypatch.setattr(token_ids, "_loaded", loaded)
    monkeypatch.setattr(token_ids, "_failed", {})
    return loaded


@pytest.fixture
def client(fake_app_factory: Make) -> TestClient:
    return fake_app_factory()


def _vectors(r: Any) -> np.ndarray:
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    rows = [
        np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
        if isinstance(d["embedding"], str)
        else d["embedding"]
        for d in data
    ]
    return np.asarray(rows, np.float32)


def _texts(client: TestClient, texts: list[str]) -> np.ndarray:
    return _vectors(client.post(URL, json={"model": MODEL, "input": texts}))


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


# -- the happy paths --------------------------------------------------------------------------
def test_arrays_of_ids_embed_like_the_texts_they_stand_for(client: TestClient) -> None:
    texts = ["a red cat", "hello world", "naïve café ☕"]
    ids = [VOCAB.encode(t) for t in texts]
    assert ids[0][-2:] == [256, 257]  # the word tokens are used, not only bytes
    r = client.post(URL, json={"model": MODEL, "input": ids})
    np.testing.assert_allclose(_vectors(r), _texts(client, texts), atol=1e-6)
    # usage counts the ids sent, as OpenAI does
    n = sum(map(len, ids))
    assert r.json()["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_one_array_of_ids_is_one_text(client: TestClient) -> None:
    r = client.post(URL, json={"model": MODEL, "input": VOCAB.encode("hello red cat")})
    got = _vectors(r)
    assert got.shape == (1, 8)
    np.testing.assert_allclose(got, _texts(client, ["hello red cat"]), atol=1e-6)


def test_many_ids_are_decoded_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INLINE_IDS the decoding runs in a thread: the same answers, errors included."""
    monkeypatch.setattr(token_ids, "INLINE_IDS", 3)
    texts = ["a red cat", "hello world"]
    r = client.post(URL, json={"model": MODEL, "input": [VOCAB.encode(t) for t in texts]})
    np.testing.assert_allclose(_vectors(r), _texts(client, texts), atol=1e-6)
    r = client.post(URL, json={"model": MODEL, "input": [104, 105, 106, 999]})
    assert _error(r, 422, "invalid_tokens")["message"].startswith("input[3] = 999")


def test_an_integral_number_is_an_id(client: TestClient) -> None:
    """JSON Schema counts 104.0 as an integer: so does the server."""
    r = client.post(URL, json={"model": MODEL, "input": [104.0, 105]})
    np.testing.assert_allclose(_vectors(r), _texts(client, ["hi"]), atol=1e-6)


def test_special_tokens_decode_to_their_text(client: TestClient) -> None:
    ids = [*VOCAB.encode("end"), 300]
    np.testing.assert_allclose(
        _vectors(client.post(URL, json={"model": MODEL, "input": [ids]})),
        _texts(client, ["end<|endoftext|>"]),
        atol=1e-6,
    )


def _langchain_bodies(
    texts: list[str], model: str, ctx_length: int = 8191, chunk_size: int = 1000
) -> list[dict[str, Any]]:
    """The JSON bodies LangChain's OpenAIEmbeddings (check_embedding_ctx_length=True, the
    default) posts through the OpenAI client for embed_documents(texts): each text's ids
    in chunks of at most `ctx_length`, `chunk_size` chunks a request, and the client's
    own `encoding_format: "base64"` (it decodes the vectors itself)."""
    chunks = [
        ids[i : i + ctx_length]
        for ids in map(VOCAB.encode, texts)
        for i in range(0, len(ids), ctx_length)
    ]
    return [
        {"input": chunks[i : i + chunk_size], "model": model, "encoding_format": "base64"}
        for i in range(0, len(chunks), chunk_size)
    ]


def test_langchain_request_bodies(client: TestClient) -> None:
    """LangChain's requests, chunked so that a chunk boundary cuts a character (é is two
    bytes, two ids here): each chunk is the text of its whole characters."""
    texts = ["a red cat", "café au lait", "hello"]
    bodies = _langchain_bodies(texts, MODEL, ctx_length=4, chunk_size=3)
    assert bodies[0]["input"][:2] == [[97, 256, 257], [99, 97, 102, 0xC3]]  # "caf" + half é
    assert bodies[0]["input"][2][0] == 0xA9  # ... and its other half starts the next chunk
    got = np.concatenate([_vectors(client.post(URL, json=b)) for b in bodies])
    chunks = ["a red cat", "caf", " au", " lai", "t", "hello"]
    np.testing.assert_allclose(got, _texts(client, chunks), atol=1e-6)


def test_the_request_names_the_encoding(client: TestClient, vocabularies: dict[str, Any]) -> None:
    """`token_encoding` picks the vocabulary: the same ids, another text."""
    other = ByteVocabulary("o200k_base")
    other.tokens[256] = b" blue"
    vocabularies["o200k_base"] = other
    ids = VOCAB.encode("a red")
    body = {"model": MODEL, "input": [ids], "token_encoding": "o200k_base"}
    np.testing.assert_allclose(
        _vectors(client.post(URL, json=body)), _texts(client, ["a blue"]), atol=1e-6
    )


# -- what cannot be decoded correctly: 422 -----------------------------------------------------
def _advice(message: str) -> None:
    """Every refusal of ids says which client setting sends strings instead."""
    assert "check_embedding_ctx_length=False" in message and "strings" in message


def test_without_tiktoken_the_answer_says_what_to_change(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_ids, "_loaded", {})
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    r = client.post(URL, json={"model": MODEL, "input": [[104, 105]]})
    err = _error(r, 422, "tokens_not_supported")
    _advice(err["message"])
    assert "'cl100k_base'" in err["message"] and "tiktoken" in err["message"]
    assert err["detail"] == {"encoding": "cl100k_base"}
    # strings are answered as always
    assert client.post(URL, json={"model": MODEL, "input": ["hi"]}).status_code == 200


def _stand_in_tiktoken(get_encoding: Callable[[str], Any]) -> types.ModuleType:
    module = types.ModuleType("tiktoken")
    names = ["cl100k_base", "o200k_base"]
    module.list_encoding_names = lambda: list(names)  # type: ignore[attr-defined]
    module.get_encoding = get_encoding  # type: ignore[attr-defined]

    def encoding_name_for_model(model: str) -> str:
        if model.startswith("gpt-4o"):
            return "o200k_base"
        raise KeyError(model)

    module.encoding_name_for_model = encoding_name_for_model  # type: ignore[attr-defined]
    return module


def test_a_vocabulary_that_cannot_be_fetched_is_a_422_and_not_fetched_again(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """tiktoken fetches its vocabulary files from the network on first use; without one
    (or without the file in its cache) the client is told to send strings, the operator
    is told in the log, and the next requests do not wait for the same failure."""
    calls: list[str] = []

    def offline(name: str) -> Any:
        calls.append(name)
        raise ConnectionError("no network")

    monkeypatch.setattr(token_ids, "_loaded", {})
    monkeypatch.setitem(sys.modules, "tiktoken", _stand_in_tiktoken(offline))
    for _ in range(3):
        err = _error(
            client.post(URL, json={"model": MODEL, "input": [1, 2]}), 422, "tokens_not_supported"
        )
        _advice(err["message"])
        assert "cannot load" in err["message"] and "ConnectionError" in err["message"]
    assert calls == ["cl100k_base"]
    assert "TIKTOKEN_CACHE_DIR" in caplog.text
    # past the retry delay it is tried again (and loads, this time)
    when, why = token_ids._failed["cl100k_base"]
    token_ids._failed["cl100k_base"] = (when - token_ids.RETRY_LOAD_AFTER_S, why)
    sys.modules["tiktoken"].get_encoding = lambda name: VOCAB  # type: ignore[union-attr]
    r = client.post(URL, json={"model": MODEL, "input": [VOCAB.encode("hello")]})
    np.testing.assert_allclose(_vectors(r), _texts(client, ["hello"]), atol=1e-6)


def test_an_encoding_tiktoken_does_not_have(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", _stand_in_tiktoken(lambda name: VOCAB))
    body = {"model": MODEL, "input": [[104]], "token_encoding": "nope_base"}
    err = _error(client.post(URL, json=body), 422, "invalid_request")
    assert "'nope_base'" in err["message"] and "cl100k_base" in err["message"]


@pytest.mark.parametrize(
    ("ids", "where", "token"),
    [
        ([[104, 105], [104, 301]], "input[1][1]", 301),  # past the end
        ([[104, 105, 270]], "input[0][2]", 270),  # an unused id inside the range
        ([104, -1], "input[1]", -1),
        ([[10**30]], "input[0][0]", "1" + "0" * 23 + "..."),  # past 64 bits: cut short
    ],
)
def test_ids_outside_the_vocabulary(
    client: TestClient, ids: list[Any], where: str, token: int | str
) -> None:
    err = _error(client.post(URL, json={"model": MODEL, "input": ids}), 422, "invalid_tokens")
    assert err["message"].startswith(f"{where} = {token} is not a token id of 'cl100k_base'")
    assert "token_encoding" in err["message"]
    _advice(err["message"])
    assert err["detail"]["token"] == token and err["detail"]["encoding"] == "cl100k_base"


def test_ids_that_are_not_utf8_text(client: TestClient) -> None:
    """Bytes that are no UTF-8 inside a text: ids of another vocabulary, not a chunk
    boundary."""
    r = client.post(URL, json={"model": MODEL, "input": [[104, 0xFF, 105]]})
    err = _error(r, 422, "invalid_tokens")
    assert err["message"].startswith("input[0]"), err  # names the input whose ids fail
    _advice(err["message"])


@pytest.mark.parametrize(
    ("ids", "code", "where"),
    [
        ([[]], "empty_text", "input[0]"),
        ([[104], []], "empty_text", "input[1]"),
        ([[32, 32, 10]], "empty_text", "input[0] (decoded from its token ids) is empty"),
        ([[104, 0, 105]], "invalid_text", "input[0] (decoded from its token ids)"),
        ([], "empty_input", "'input' is empty"),
    ],
)
def test_empty_and_blank(client: TestClient, ids: list[Any], code: str, where: str) -> None:
    err = _error(client.post(URL, json={"model": MODEL, "input": ids}), 422, code)
    assert err["message"].startswith(where)


def test_the_limits_of_strings_hold(fake_app_factory: Make) -> None:
    client = fake_app_factory(Settings(max_texts=2, max_text_chars=5))
    three = [[104]] * 3
    err = _error(client.post(URL, json={"model": MODEL, "input": three}), 422, "too_many_items")
    assert "the limit is 2" in err["message"]
    long = VOCAB.encode("hello!")  # 2 ids, 6 characters
    err = _error(client.post(URL, json={"model": MODEL, "input": [long]}), 422, "text_too_long")
    assert err["message"].startswith("input[0] (decoded from its token ids) has 6 characters")
    assert client.post(URL, json={"model": MODEL, "input": [[104]] * 2}).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        [[104, "105"]],  # a string among ids
        [[104, 1.5]],  # a fraction
        [[True]],  # a boolean
        ["hi", [104]],  # strings and ids mixed
        [104, [105]],
    ],
)
def test_ids_are_json_integers_and_never_mixed(client: TestClient, value: list[Any]) -> None:
    err = _error(client.post(URL, json={"model": MODEL, "input": value}), 422, "invalid_request")
    assert err["message"].startswith("input"), err  # the field at fault is named


def test_ids_are_text(client: TestClient) -> None:
    body = {"model": MODEL, "input": [[104]], "modality": "image"}
    assert "modality" in _error(client.post(URL, json=body), 422, "invalid_request")["message"]


def test_the_model_is_checked_before_the_ids(client: TestClient) -> None:
    r = client.post(URL, json={"model": "other", "input": [[999999]]})
    _error(r, 404, "model_not_found")


def test_ids_need_the_text_tower(fake_app_factory: Make) -> None:
    images_only = fake_app_factory(encoder=FakeEncoder(capabilities=frozenset({"image"})))
    r = images_only.post(URL, json={"model": MODEL, "input": [[104]]})
    assert "text" in _error(r, 400, "missing_capability")["message"]


def test_the_document_describes_the_token_shapes(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["TokenIds"]["type"] == "array" and schemas["TokenIds"]["minItems"] == 1
    assert schemas["TokenIds"]["items"] == {"type": "integer", "minimum": 0}
    branches = schemas["OpenAIEmbeddingRequest"]["properties"]["input"]["anyOf"]
    ref = {"$ref": "#/components/schemas/TokenIds"}
    assert ref in branches  # one array of ids: its length is no count of inputs
    nested = next(b for b in branches if b.get("items") == ref)
    assert nested["maxItems"] == Settings().max_texts and nested["minItems"] == 1
    assert "token_encoding" in schemas["OpenAIEmbeddingRequest"]["properties"]


# -- the pieces --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"plain", "plain"),
        ("café".encode()[:-1], "caf"),  # the first byte of é, the next chunk has the rest
        ("é au lait".encode()[1:], " au lait"),  # the rest of é, from the chunk before
        ("☕ tea".encode()[2:], " tea"),  # two of the three bytes of ☕ in the last chunk
        ("tea ☕".encode()[:-2], "tea "),
        ("🐈".encode()[1:3], ""),  # the middle of a character: no text left
        (b"a\xffb", None),  # not UTF-8 inside the text
        (b"\x80\x80\x80\x80a", None),  # more continuation bytes than a character has
        (b"a\xc3b", None),  # a lead byte without its continuation, inside
    ],
)
def test_utf8_text(data: bytes, text: str | None) -> None:
    assert utf8_text(data) == text


def test_encoding_name_follows_langchain() -> None:
    """LangChain: tiktoken's encoding for the model name, else cl100k_base."""
    tiktoken = pytest.importorskip("tiktoken")
    name = token_ids.encoding_name
    assert name(None, MODEL) == name(None, "builtin") == "cl100k_base"
    assert name(None, "text-embedding-3-small") == "cl100k_base"
    assert name(None, "gpt-4o") == tiktoken.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert name("p50k_base", "gpt-4o") == "p50k_base"


def test_encoding_name_without_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    assert token_ids.encoding_name(None, "gpt-4o") == "cl100k_base"


@pytest.fixture
def tiktoken_vocabulary() -> Iterator[Any]:
    """A small real tiktoken.Encoding (made here: no download): bytes, a few merges, a
    special token past a gap, as cl100k_base has one."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    for word in (b"ca", b"cat", b" cat", b"re", b"red", b" red"):
        ranks[word] = len(ranks)
    yield tiktoken.Encoding(
        "cl100k_base",
        pat_str=r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 300},
    )


def test_a_real_tiktoken_encoding(
    client: TestClient, vocabularies: dict[str, Any], tiktoken_vocabulary: Any
) -> None:
    vocabularies["cl100k_base"] = tiktoken_vocabulary
    texts = ["a red cat", "naïve café"]
    ids = [tiktoken_vocabulary.encode(t) for t in texts]
    assert 261 in ids[0]  # a merge, not only bytes
    np.testing.assert_allclose(
        _vectors(client.post(URL, json={"model": MODEL, "input": ids})),
        _texts(client, texts),
        atol=1e-6,
    )
    for bad, at in (([97, 280], 1), ([97, 301], 1)):  # in its gap, past its end
        with pytest.raises(RequestError) as e:
            decode(bad, tiktoken_vocabulary, "input[0]")
        assert e.value.code == "invalid_tokens" and e.value.detail["position"] == at
