"""`contrastive bench overload`: what clients get when offered more than the server can do.

In one run on one machine:
1. a server process on loopback (`contrastive serve`, the builtin model by default);
2. per modality (image: one 640x480 JPEG a request, multipart; text: one short text), its
   capacity: the answered requests/s of a closed loop of `--concurrency` clients (at most
   `always_admit_requests`, 32, so that none is refused);
3. an open loop at `--factor` x that capacity (or `--rate`) for `--seconds`: requests due
   at Poisson arrival times, sent whatever the answers (contrastkit.service.bench.openloop);
4. the answers by status (200, 503, other) and the requests with none, by cause; p50 and
   p99 of the 200s and of the 503s, timed from when each request was due; the server's
   `max_queue_wait_ms` and its mean batch time under the load (/metrics,
   contrastive_batch_seconds); and each goal, PASS or FAIL:
   - only 200 and 503 (no other status, no request without an answer);
   - the 503s are fast: p99 under 100 ms;
   - the 200s are bounded: p99 at most max_queue_wait_ms plus one batch.

The figures hold for the machine they were measured on, with the load generator sharing
its cores: the report gives the client's own lag (how late requests went out) so that a
client that fell behind is seen. The result goes to OUT/overload-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from contrastkit.service.bench import flags
from contrastkit.service.bench.loadgen import run_load
from contrastkit.service.bench.openloop import Outcome, offer
from contrastkit.service.bench.serve import (
    environment,
    free_port,
    photo_jpeg,
    single_item_requests,
    start_server,
    write_result,
)

HOST = "127.0.0.1"
FAST_503_S = 0.1  # the goal for the 503s' p99
LAGGING_S = 0.05  # a client whose sends are this late (p99) understates the offered load

# its flags live in contrastkit.service.bench.flags, which `--help` imports without torch
add_arguments = flags.overload


# -- figures -------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (None of nothing)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(
    outcomes: Sequence[Outcome], max_queue_wait_s: float, batch_s: float
) -> dict[str, Any]:
    """The open loop's answers -> counts, tails and the three goals (None: not measured)."""
    ok = [o.seconds for o in outcomes if o.status == 200]
    shed = [o.seconds for o in outcomes if o.status == 503]
    other = Counter(str(o.status) for o in outcomes if o.status not in (None, 200, 503))
    unanswered = Counter(o.error or "unknown" for o in outcomes if o.status is None)
    ok_p99, shed_p99 = percentile(ok, 99), percentile(shed, 99)
    bound = max_queue_wait_s + batch_s
    return {
        "sent": len(outcomes),
        "status_200": len(ok),
        "status_503": len(shed),
        "other_status": dict(other),
        "no_answer": dict(unanswered),
        "no_answer_on_reused_connection": sum(1 for o in outcomes if o.status is None and o.reused),
        "p50_200_s": percentile(ok, 50),
        "p99_200_s": ok_p99,
        "p50_503_s": percentile(shed, 50),
        "p99_503_s": shed_p99,
        "over_100ms_503": sum(1 for s in shed if s > FAST_503_S),
        "over_bound_200": sum(1 for s in ok if s > bound),
        "max_queue_wait_s": max_queue_wait_s,
        "batch_s": batch_s,
        "bound_200_s": bound,
        "client_lag_p99_s": percentile([o.lag for o in outcomes], 99),
        "goals": {
            "only_200_and_503": not other and not unanswered,
            "p99_503_under_100ms": None if shed_p99 is None else shed_p99 < FAST_503_S,
            "p99_200_within_wait_plus_batch": None if ok_p99 is None else ok_p99 <= bound,
        },
    }


def metric_sum_count(text: str, name: str, modality: str) -> tuple[float, float]:
    """(sum, count) of a histogram's series for `modality` in /metrics' text."""
    label = f'{{modality="{modality}"}}'
    found = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in found:
            if line.startswith(f"{name}_{part}{label} "):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


def _metrics(port: int) -> str:
    import httpx

    return httpx.get(f"http://{HOST}:{port}/metrics", timeout=30).text


def _queue_depth(port: int, modality: str) -> float:
    prefix = f'contrastive_queue_depth{{modality="{modality}"}} '
    for line in _metrics(port).splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _drain(port: int, modality: str, timeout: float) -> None:
    """Wait until the server's queue of `modality` is empty (the next run starts fresh)."""
    deadline = time.monotonic() + timeout
    while _queue_depth(port, modality) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


# -- one modality --------------------------------------------------------------------------
def measure(args: argparse.Namespace, port: int, modality: str, request: bytes) -> dict[str, Any]:
    """Capacity (closed loop), then the open loop at the offered rate -> its row."""
    warmup = 0.5 if args.quick else 1.0
    closed = asyncio.run(
        run_load(HOST, port, request, args.concurrency, args.capacity_seconds, warmup)
    )
    capacity = closed.rps
    rate = args.rate if args.rate is not None else args.factor * capacity
    _drain(port, modality, 30)
    before = metric_sum_count(_metrics(port), "contrastive_batch_seconds", modality)
    outcomes = asyncio.run(offer(HOST, port, request, rate, args.seconds, args.seed))
    after = metric_sum_count(_metrics(port), "contrastive_batch_seconds", modality)
    batches = after[1] - before[1]
    batch_s = (after[0] - before[0]) / batches if batches else 0.0
    row = summarize(outcomes, args.max_queue_wait_ms / 1000, batch_s)
    _drain(port, modality, 30 + args.max_queue_wait_ms / 1000)
    return {
        "modality": modality,
        "capacity_per_s": capacity,
        "capacity_clients": args.concurrency,
        "capacity_errors": closed.errors,
        "offered_per_s": rate,
        "seconds": args.seconds,
        **row,
    }


def run(args: argparse.Namespace) -> int:
    from contrastkit.training.encoders import resolve_device

    if args.quick:
        args.seconds, args.capacity_seconds = 3.0, 2.0
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    port = args.port or free_port()
    server = None
    if args.port is None:
        print(f"starting the server ({args.model}) ...", flush=True)
        extra = ["--max-queue-wait-ms", str(args.max_queue_wait_ms), "--collections", "false"]
        server = start_server(args, port, extra)
    rows = []
    try:
        reqs = single_item_requests(port, photo_jpeg())
        for m in modalities:
            rows.append(measure(args, port, m, reqs[m]))
            print_row(rows[-1])
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    result = {
        "benchmark": "overload",
        "model": args.model,
        "batch": args.batch,
        "max_queue_wait_ms": args.max_queue_wait_ms,
        "factor": None if args.rate is not None else args.factor,
        "quick": args.quick,
        **environment(str(resolve_device(args.device))),
        "rows": rows,
    }
    path = write_result(args.out, "overload", result)
    print(f"wrote {path}")
    return 0


# -- report --------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


def print_row(r: dict[str, Any]) -> None:
    goals = r["goals"]
    print(
        f"{r['modality']}: capacity {r['capacity_per_s']:.1f} req/s ({r['capacity_clients']} "
        f"clients, closed loop); offered {r['offered_per_s']:.1f} req/s for {r['seconds']:g} s, "
        f"{r['sent']} sent\n"
        f"  200: {r['status_200']} (p50 {_ms(r['p50_200_s'])}, p99 {_ms(r['p99_200_s'])}, "
        f"{r['over_bound_200']} over {_ms(r['bound_200_s'])})\n"
        f"  503: {r['status_503']} (p50 {_ms(r['p50_503_s'])}, p99 {_ms(r['p99_503_s'])}, "
        f"{r['over_100ms_503']} over 100 ms)\n"
        f"  other statuses: {r['other_status'] or 'none'}; no answer: {r['no_answer'] or 'none'}"
        f" ({r['no_answer_on_reused_connection']} on kept-alive connections)\n"
        f"  max_queue_wait {_ms(r['max_queue_wait_s'])}, mean batch {_ms(r['batch_s'])}; "
        f"client lag p99 {_ms(r['client_lag_p99_s'])}"
        + (" (the client fell behind)" if (r["client_lag_p99_s"] or 0) > LAGGING_S else "")
        + "\n"
        f"  only 200 and 503: {_verdict(goals['only_200_and_503'])}; "
        f"503 p99 < 100 ms: {_verdict(goals['p99_503_under_100ms'])}; "
        f"200 p99 <= wait + batch: {_verdict(goals['p99_200_within_wait_plus_batch'])}",
        flush=True,
    )
