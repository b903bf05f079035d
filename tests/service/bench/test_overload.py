"""`contrastive bench overload`: the open loop's arrivals and its reading of answers (a
stub server that misbehaves on purpose), the summary's counts, tails and goals, and a
smoke run end to end. No figure is asserted: timing goals are the bench's to report."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from contrastkit.service.bench.openloop import Outcome, arrivals, offer
from contrastkit.service.bench.overload import metric_sum_count, percentile, summarize
from contrastkit.service.cli import main
from tests.helpers import write_tiny_clip_export


def test_arrivals_are_a_seeded_poisson_process() -> None:
    due = arrivals(100.0, 50.0, seed=3)
    assert due == arrivals(100.0, 50.0, seed=3) and due != arrivals(100.0, 50.0, seed=4)
    assert due == sorted(due) and due[0] > 0 and due[-1] < 50.0
    assert len(due) == pytest.approx(5000, rel=0.05)  # the rate, on average
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert max(gaps) > 5 * min(gaps)  # bunched, not evenly spaced


def _ok(seconds: float, status: int = 200) -> Outcome:
    return Outcome(due=0.0, seconds=seconds, status=status)


def test_the_summary_counts_every_answer_and_every_missing_one() -> None:
    outcomes = [_ok(0.5 + i / 100) for i in range(100)]  # 200s: 0.50 .. 1.49 s
    outcomes += [_ok(0.001 * (i + 1), 503) for i in range(100)]  # 503s: 1 .. 100 ms
    outcomes += [_ok(0.2, 500), Outcome(0.0, 0.1, None, "closed_on_reuse", reused=True)]
    row = summarize(outcomes, max_queue_wait_s=1.0, batch_s=0.4)
    assert (row["sent"], row["status_200"], row["status_503"]) == (202, 100, 100)
    assert row["other_status"] == {"500": 1}
    assert row["no_answer"] == {"closed_on_reuse": 1} and row["no_answer_on_reused_connection"] == 1
    assert row["p99_503_s"] == pytest.approx(0.099) and row["over_100ms_503"] == 0
    assert row["p99_200_s"] == pytest.approx(1.48) and row["bound_200_s"] == pytest.approx(1.4)
    assert row["over_bound_200"] == 9  # 1.41 .. 1.49 s
    assert row["goals"] == {
        "only_200_and_503": False,
        "p99_503_under_100ms": True,
        "p99_200_within_wait_plus_batch": False,
    }


def test_goals_not_measured_are_none() -> None:
    row = summarize([_ok(0.1)], max_queue_wait_s=3.0, batch_s=0.5)
    assert row["goals"] == {
        "only_200_and_503": True,
        "p99_503_under_100ms": None,  # no 503 at all: the load was no overload
        "p99_200_within_wait_plus_batch": True,
    }
    assert percentile([], 99) is None and percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_the_batch_time_is_read_from_the_metrics() -> None:
    text = "\n".join(
        [
            "# HELP contrastive_batch_seconds time of one model forward",
            'contrastive_batch_seconds_bucket{le="0.1",modality="image"} 3.0',
            'contrastive_batch_seconds_sum{modality="image"} 1.5',
            'contrastive_batch_seconds_count{modality="image"} 4.0',
            'contrastive_batch_seconds_sum{modality="text"} 9.0',
            'contrastive_batch_seconds_count{modality="text"} 10.0',
        ]
    )
    assert metric_sum_count(text, "contrastive_batch_seconds", "image") == (1.5, 4.0)
    assert metric_sum_count(text, "contrastive_batch_seconds", "text") == (9.0, 10.0)
    assert metric_sum_count("", "contrastive_batch_seconds", "text") == (0.0, 0.0)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def _stub(answer: bytes, answered_per_connection: int) -> asyncio.Server:
    """A server that answers the first `answered_per_connection` requests of each
    connection, then reads the next and closes without a word (what a server closing an
    idle connection does to a request that crossed it); `answer` closes after itself
    when it says `Connection: close`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(answered_per_connection):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            if b"close" in answer:
                break
        else:
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def _offer_to(answer: bytes, answered: int) -> list[Outcome]:
    async def main() -> list[Outcome]:
        server = await _stub(answer, answered)
        port = server.sockets[0].getsockname()[1]
        try:  # one connection at a time: each request goes on the last one, if kept
            return await offer("127.0.0.1", port, REQUEST, 200.0, 0.1, timeout=5, max_connections=1)
        finally:
            server.close()

    return asyncio.run(main())


def test_a_request_on_a_kept_alive_connection_that_closes_is_closed_on_reuse() -> None:
    outcomes = _offer_to(OK, answered=1)
    assert len(outcomes) >= 6
    for first, second in zip(outcomes[::2], outcomes[1::2], strict=False):
        assert (first.status, first.error, first.reused) == (200, None, False)
        assert (second.status, second.error, second.reused) == (None, "closed_on_reuse", True)


def test_connection_close_is_never_reused() -> None:
    outcomes = _offer_to(OK_CLOSE, answered=1)
    assert {(o.status, o.reused) for o in outcomes} == {(200, False)}


@pytest.mark.slow
def test_bench_overload_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_clip_export(tmp_path / "clip")
    out = tmp_path / "results"
    argv = ["bench", "overload", "--model", str(model), "--device", "cpu", "--quick"]
    argv += ["--batch", "4", "--concurrency", "4", "--out", str(out)]
    assert main(argv) == 0
    (result_file,) = out.glob("overload-*.json")
    result = json.loads(result_file.read_text())
    assert result["benchmark"] == "overload" and result["max_queue_wait_ms"] == 3000.0
    assert [r["modality"] for r in result["rows"]] == ["image", "text"]
    for row in result["rows"]:
        assert row["capacity_per_s"] > 0 and row["sent"] > 0
        assert (
            row["status_200"]
            + row["status_503"]
            + sum(row["other_status"].values())
            + sum(row["no_answer"].values())
            == row["sent"]
        )
        assert set(row["goals"]) == {
            "only_200_and_503",
            "p99_503_under_100ms",
            "p99_200_within_wait_plus_batch",
        }
    printed = capsys.readouterr().out
    assert "only 200 and 503:" in printed and "503 p99 < 100 ms:" in printed
