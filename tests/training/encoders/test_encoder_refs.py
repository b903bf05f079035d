"""Model references to open_clip on the Hugging Face Hub, parsed and handed over offline."""

from __future__ import annotations

import socket
from typing import Any

import open_clip
import pytest
import torch

from contrastkit.training.encoders import (
    UnknownModelError,
    check_reference,
    hf_hub_repo,
    load_encoder,
)

REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: the parsing must not reach the Hub."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class _TinyClip(torch.nn.Module):
    """Just what OpenCLIPEncoder reads of an open_clip model."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.image_size = 8  # type: ignore[assignment]
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.ones(pixels.shape[0], 4)


@pytest.mark.usefixtures("no_network")
def test_hf_hub_references_pass_the_check_offline() -> None:
    check_reference(f"open_clip:hf-hub:{REPO}", "cpu")
    check_reference("open_clip:hf-hub:timm/ViT-B-16-SigLIP", "cpu")
    assert hf_hub_repo(f"hf-hub:{REPO}") == REPO
    assert hf_hub_repo("ViT-B-32") is None  # an architecture name, checked as before


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    "repo",
    [
        "",
        "laion",
        "laion/",
        "/name",
        "org/na me",
        "org/name/extra",
        "org/-name",
        "org/a..b",
        "org/a--b",
        "o rg/name",
        "org/" + "x" * 100,
    ],
)
def test_malformed_hf_hub_ids_are_refused_with_the_shape_to_use(repo: str) -> None:
    with pytest.raises(UnknownModelError, match="open_clip:hf-hub:ORG/NAME"):
        check_reference(f"open_clip:hf-hub:{repo}", "cpu")


def test_architecture_names_are_still_checked() -> None:
    check_reference("open_clip:ViT-B-32", "cpu")
    with pytest.raises(UnknownModelError, match="unknown open_clip architecture"):
        check_reference("open_clip:no-such-arch", "cpu")


@pytest.mark.usefixtures("no_network")
def test_load_encoder_hands_the_hub_name_to_open_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, dict[str, Any]]] = []
    tokenizers: list[str] = []

    def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
        created.append((name, kwargs))
        return _TinyClip()

    def get_tokenizer(name: str, **_: Any) -> object:
        tokenizers.append(name)
        return lambda texts: torch.zeros(len(texts), 77, dtype=torch.long)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(open_clip, "get_tokenizer", get_tokenizer)
    encoder = load_encoder(f"open_clip:hf-hub:{REPO}", device="cpu")
    assert created == [(f"hf-hub:{REPO}", {"pretrained": None})]
    assert tokenizers == [f"hf-hub:{REPO}"]
    assert encoder.model_id == f"open_clip:hf-hub:{REPO}"
    assert encoder.embed_dim == 4 and encoder.info.preprocess.size == 8


@pytest.mark.usefixtures("no_network")
def test_a_pretrained_tag_with_a_hub_model_is_refused() -> None:
    with pytest.raises(UnknownModelError, match="brings its own weights"):
        load_encoder(f"open_clip:hf-hub:{REPO}", pretrained="laion2b_s34b_b79k", device="cpu")
    with pytest.raises(UnknownModelError, match="ORG/NAME"):
        load_encoder("open_clip:hf-hub:no-slash", device="cpu")
