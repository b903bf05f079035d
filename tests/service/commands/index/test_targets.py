"""Which Target `contrastive index add|search` works on: a running local server is used
unless asked otherwise, and only our server's readiness answer counts as one."""

from __future__ import annotations

import httpx
import pytest

from contrastkit.service.cli import main
from tests.helpers import free_port

QUERY = "a photo of a red square"


class _StubTarget:
    """Stands in for LocalTarget / RemoteTarget: records how it was opened, answers one hit."""

    def __init__(self, opened: list[tuple[str, str | None]], kind: str, url: str | None) -> None:
        opened.append((kind, url))

    def search(self, text: str, k: int, where: object) -> list[tuple[str, float, object]]:
        return [("hit.png", 0.5, {})]

    def close(self) -> None:
        pass


@pytest.fixture
def targets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """LocalTarget and RemoteTarget replaced by stubs; the list of what was opened, in order."""
    opened: list[tuple[str, str | None]] = []
    module = "contrastkit.service.commands.index.targets"
    monkeypatch.setattr(
        f"{module}.LocalTarget", lambda args, create: _StubTarget(opened, "local", None)
    )
    monkeypatch.setattr(
        f"{module}.RemoteTarget", lambda args, create, url: _StubTarget(opened, "remote", url)
    )
    monkeypatch.setenv("CONTRASTIVE_PORT", "8123")
    return opened


def _probe(monkeypatch: pytest.MonkeyPatch, answers: bool) -> list[str]:
    probed: list[str] = []

    def probe(url: str, timeout: float = 0.5) -> bool:
        probed.append(url)
        return answers

    monkeypatch.setattr("contrastkit.service.commands.index.targets.probe_server", probe)
    return probed


def test_a_running_server_is_used_and_named(
    monkeypatch: pytest.MonkeyPatch,
    targets: list[tuple[str, str | None]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    probed = _probe(monkeypatch, answers=True)
    assert main(["index", "search", "pics", QUERY]) == 0
    out, err = capsys.readouterr()
    url = "http://127.0.0.1:8123"  # the settings' host and port
    assert probed == [url] and targets == [("remote", url)]
    assert f"a server is running at {url}; using it (pass --local" in err
    assert "hit.png" in out


def test_without_a_server_the_model_loads_here(
    monkeypatch: pytest.MonkeyPatch,
    targets: list[tuple[str, str | None]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    probed = _probe(monkeypatch, answers=False)
    assert main(["index", "search", "pics", QUERY]) == 0
    assert probed == ["http://127.0.0.1:8123"] and targets == [("local", None)]
    assert "server" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--local"], ["--model", "builtin"], ["--device", "cpu"], ["--collections-dir", "c"]],
)
def test_local_or_in_process_flags_skip_the_probe(
    monkeypatch: pytest.MonkeyPatch, targets: list[tuple[str, str | None]], flags: list[str]
) -> None:
    probed = _probe(monkeypatch, answers=True)
    assert main(["index", "search", "pics", QUERY, *flags]) == 0
    assert probed == [] and targets == [("local", None)]


def test_an_explicit_url_is_used_as_given(
    monkeypatch: pytest.MonkeyPatch, targets: list[tuple[str, str | None]]
) -> None:
    probed = _probe(monkeypatch, answers=False)
    assert main(["index", "search", "pics", QUERY, "--url", "http://elsewhere:9"]) == 0
    assert probed == [] and targets == [("remote", "http://elsewhere:9")]
    with pytest.raises(SystemExit) as e:  # argparse: not allowed with --url
        main(["index", "search", "pics", QUERY, "--url", "http://x:1", "--local"])
    assert e.value.code == 2


def test_probe_counts_only_our_readiness_answer(monkeypatch: pytest.MonkeyPatch) -> None:

    from contrastkit.service.commands.index.targets import probe_server

    def answering(status: int, **kwargs: object) -> object:
        def get(url: str, timeout: float) -> httpx.Response:
            assert url == "http://h:1/readyz" and timeout == 0.5
            return httpx.Response(status, **kwargs)  # type: ignore[arg-type]

        return get

    cases = [
        (answering(200, json={"status": "ready", "model": "m"}), True),
        (answering(503, json={"status": "loading", "reason": "loading model m (3 s)"}), True),
        (answering(404, text="<html>not found</html>"), False),
        (answering(200, text="some other program"), False),
    ]
    for get, expected in cases:
        monkeypatch.setattr(httpx, "get", get)
        assert probe_server("http://h:1") is expected

    def refused(url: str, timeout: float) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx, "get", refused)
    assert probe_server("http://h:1") is False


def test_probe_of_a_closed_port_is_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed port is refused at once; what bounds a silent one is the probe's own
    timeout, checked by what it asks of httpx (not by a stopwatch)."""
    from contrastkit.service.commands.index.targets import PROBE_TIMEOUT_S, probe_server

    assert probe_server(f"http://127.0.0.1:{free_port()}") is False
    asked: list[float] = []
    real_get = httpx.get

    def spy(url: str, timeout: float) -> httpx.Response:
        asked.append(timeout)
        return real_get(url, timeout=timeout)

    monkeypatch.setattr(httpx, "get", spy)
    assert probe_server(f"http://127.0.0.1:{free_port()}") is False
    assert asked == [PROBE_TIMEOUT_S] and PROBE_TIMEOUT_S <= 1.0


def test_contrastive_url_names_the_server_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
    targets: list[tuple[str, str | None]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    probed = _probe(monkeypatch, answers=True)
    monkeypatch.setenv("CONTRASTIVE_URL", "http://gpu-box:8000/")
    assert main(["index", "search", "pics", QUERY]) == 0
    assert probed == [] and targets == [("remote", "http://gpu-box:8000")]
    assert "using the server at http://gpu-box:8000 (CONTRASTIVE_URL; pass --url" in (
        capsys.readouterr().err
    )
    # --url wins over it; --local and the in-process flags still mean here
    assert main(["index", "search", "pics", QUERY, "--url", "http://other:1"]) == 0
    assert main(["index", "search", "pics", QUERY, "--local"]) == 0
    assert main(["index", "search", "pics", QUERY, "--model", "builtin"]) == 0
    assert targets[1:] == [("remote", "http://other:1"), ("local", None), ("local", None)]
    assert "CONTRASTIVE_URL" not in capsys.readouterr().err
