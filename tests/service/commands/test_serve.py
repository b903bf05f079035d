"""`contrastive serve` and the observability settings: tracing without the otel extra
stops it before anything loads, with one line that says what to install."""

from __future__ import annotations

import sys

import pytest

from contrastkit.service.cli import build_parser, main
from contrastkit.service.commands.serve import settings_from_args


def test_tracing_without_the_extra_fails_fast_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    assert main(["serve", "--tracing", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("contrastive serve: tracing is on but OpenTelemetry is not installed")
    assert "pip install 'contrastkit[otel]'" in err


def test_the_flags_and_the_environment_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTIVE_LOG_FORMAT", "json")
    s = settings_from_args(build_parser().parse_args(["serve", "--tracing", "true"]))
    assert s.tracing and s.log_format == "json"
    s = settings_from_args(build_parser().parse_args(["serve", "--log-format", "text"]))
    assert not s.tracing and s.log_format == "text"
