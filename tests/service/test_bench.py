"""`contrastive bench serve` runs end to end (tiny model, short levels) and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.helpers import write_tiny_clip_export


@pytest.mark.slow
def test_bench_serve_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_clip_export(tmp_path / "clip")
    out = tmp_path / "results"
    argv = [
        "bench",
        "serve",
        "--model",
        str(model),
        "--device",
        "cpu",
        "--seconds",
        "0.5",
        "--concurrency",
        "1,4",
        "--batch",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (result_file,) = out.glob("serve-*.json")
    result = json.loads(result_file.read_text())
    assert result["device"] == "cpu" and result["torch"]
    assert [(r["modality"], r["concurrency"]) for r in result["http"]] == [
        ("image", 1),
        ("image", 4),
        ("text", 1),
        ("text", 4),
    ]
    for row in result["http"]:
        assert row["requests_per_s"] > 0 and row["errors"] == {}
        assert row["ratio_http_to_in_process"] == pytest.approx(
            row["requests_per_s"] / row["in_process_items_per_s"]
        )
    assert "HTTP / in-process" in capsys.readouterr().out
