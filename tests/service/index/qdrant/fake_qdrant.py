"""A stand-in Qdrant server for fault tests: enough of Qdrant's REST API for the service's
collection routes (collections, the points of each, in memory), on 127.0.0.1, and faults
put on chosen requests: stall, drop the connection, answer garbage or an error.

Not a Qdrant: no filters (a search returns the best points of the whole collection), no
collection info. The fault tests need the calls around the one they break to work.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from contrastkit.service.index.qdrant.points import point_id
from contrastkit.service.index.qdrant.sidecar import CollectionConfig
from contrastkit.service.index.types import IndexSpec

# What a fault does to the request it is put on:
#   stall           read the request, then answer nothing until the test ends
#   drop            read the request, close the connection without an answer
#   error-500       500 with a Qdrant-shaped error body
#   wait-timeout    200 {"status": "wait_timeout"}: a write accepted, not applied yet
# and those that apply the request (a write lands), then lose or garble the answer:
#   apply-and-drop  close the connection without an answer
#   not-json        200 with an HTML page (a proxy's, say)
#   truncated-json  200 with JSON cut short
#   wrong-shape     200 with JSON whose result is not what the call answers
#   no-result       200 with JSON without a result
FAULTS = (
    "stall",
    "drop",
    "apply-and-drop",
    "not-json",
    "truncated-json",
    "wrong-shape",
    "no-result",
    "error-500",
    "wait-timeout",
)
APPLIED = ("apply-and-drop", "not-json", "truncated-json", "wrong-shape", "no-result")
Fault = Callable[[str, str], str | None]  # (method, path) -> the fault to apply, or None


class FakeQdrant:
    """The server: `url` to point a client at, `points[qname][point id]` its state,
    `fault` the faults to apply (None: none), `requests` what it was sent."""

    def __init__(self) -> None:
        self.points: dict[str, dict[str, dict[str, Any]]] = {}
        self.fault: Fault | None = None
        self.requests: list[tuple[str, str]] = []
        self.stalled = threading.Event()  # set once a request stalls
        self._release = threading.Event()  # ends every stall (at close)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def seed(self, name: str, model_id: str, dim: int, prefix: str = "contrastive") -> None:
        """A collection as QdrantBackend.create leaves it: its Qdrant collection, and its
        config point in the sidecar."""
        cfg = CollectionConfig(name, model_id, dim, IndexSpec(), "2025-01-01T00:00:00+00:00")
        self.points.setdefault(f"{prefix}_collections", {})[point_id(name)] = {
            "id": point_id(name),
            "payload": cfg.payload(),
            "vector": {},
        }
        self.points[f"{prefix}-{name}"] = {}

    # -- the API ----------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, result) of one request, applied to the state."""
        parts = path.split("?")[0].strip("/").split("/")
        if parts == ["collections"] and method == "GET":
            return 200, {"collections": [{"name": n} for n in sorted(self.points)]}
        if len(parts) < 2 or parts[0] != "collections":
            return 404, None
        name, rest = parts[1], parts[2:]
        if rest == ["exists"]:
            return 200, {"exists": name in self.points}
        if not rest and method == "PUT":
            self.points.setdefault(name, {})
            return 200, True
        if not rest and method == "DELETE":
            return 200, self.points.pop(name, None) is not None
        if name not in self.points:
            return 404, None
        return self._points(self.points[name], method, rest, body)

    def _points(
        self, points: dict[str, dict[str, Any]], method: str, rest: list[str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        done = {"operation_id": 1, "status": "completed"}
        if rest == ["points"] and method == "PUT":
            for p in _upserted(body):
                points[str(p["id"])] = p
            return 200, done
        if rest == ["points"] and method == "POST":  # retrieve by ids
            return 200, [_record(points[str(i)]) for i in body.get("ids", []) if str(i) in points]
        if rest == ["points", "delete"]:
            for i in body.get("points", []):
                points.pop(str(i), None)
            return 200, done
        if rest == ["points", "count"]:
            return 200, {"count": len(points)}
        if rest == ["points", "scroll"]:
            return 200, {"points": [_record(p) for p in points.values()], "next_page_offset": None}
        if rest == ["points", "query", "batch"]:
            return 200, [{"points": _best(points, q)} for q in body.get("searches", [])]
        return 404, None


def _upserted(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of an upsert body: a list of points, or a batch of columns."""
    if "points" in body:
        return [dict(p) for p in body["points"]]
    b = body["batch"]
    return [
        {"id": i, "vector": v, "payload": p}
        for i, v, p in zip(b["ids"], b["vectors"], b["payloads"], strict=True)
    ]


def _record(p: dict[str, Any]) -> dict[str, Any]:
    return {"id": p["id"], "payload": p.get("payload"), "vector": None}


def _best(points: dict[str, dict[str, Any]], search: dict[str, Any]) -> list[dict[str, Any]]:
    """The `limit` points of highest cosine to the query, as Qdrant scores them."""
    query = search["query"]  # qdrant-client sends a vector as {"nearest": [...]}
    q = np.asarray(query["nearest"] if isinstance(query, dict) else query, np.float32)
    scored = []
    for p in points.values():
        v = np.asarray(p["vector"], np.float32)
        cos = float(q @ v / (np.linalg.norm(q) * np.linalg.norm(v) + 1e-12))
        scored.append({"id": p["id"], "version": 0, "score": cos, "payload": p.get("payload")})
    return sorted(scored, key=lambda h: -h["score"])[: int(search.get("limit", 10))]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a stalled request: nothing to report."""


def _handler(fake: FakeQdrant) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server: the client pools

        def _serve(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            body = json.loads(raw) if raw.strip() else {}
            method, path = self.command, self.path
            with fake._lock:
                fake.requests.append((method, path))
            fault = fake.fault(method, path) if fake.fault else None
            if fault in ("stall", "drop"):
                return self._break(fault)
            if fault in ("error-500", "wait-timeout"):
                return self._send(*_faulty(fault, 200, None))
            with fake._lock:
                try:
                    status, result = fake.answer(method, path, body)
                except Exception as e:  # a request the fake does not know: say so
                    status, result = 500, f"the fake cannot answer this: {e!r}"
            if fault == "apply-and-drop":
                return self._break("drop")
            self._send(*_faulty(fault, status, result))

        def _break(self, fault: str) -> None:
            if fault == "stall":
                fake.stalled.set()
                fake._release.wait(600)  # the test ends it (close) long before
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _send(self, status: int, payload: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _faulty(fault: str | None, status: int, result: Any) -> tuple[int, bytes, str]:
    """(status, body, content type) of an answer, the fault applied."""
    if fault == "not-json":
        return 200, b"<html><body>502 Bad Gateway</body></html>", "text/html"
    if fault == "error-500":
        return 500, _json({"status": {"error": "Service internal error"}, "time": 0.0}), JSON
    if fault == "wait-timeout":
        return 200, _json({"result": {"operation_id": 1, "status": "wait_timeout"}}), JSON
    if status == 404:
        return 404, _json({"status": {"error": "Not found"}, "time": 0.0}), JSON
    if status == 500:
        return 500, _json({"status": {"error": str(result)}, "time": 0.0}), JSON
    payload = {"result": result, "status": "ok", "time": 0.0}
    if fault == "wrong-shape":
        payload["result"] = {"unexpected": [1, 2, 3]} if isinstance(result, list) else [1, 2]
    elif fault == "no-result":
        payload["result"] = None
    body = _json(payload)
    return status, body[: len(body) // 2] if fault == "truncated-json" else body, JSON


JSON = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def on(method: str, path: str, fault: str) -> Fault:
    """A fault for requests of `method` whose path matches the regex `path`."""
    pattern = re.compile(path)

    def pick(m: str, p: str) -> str | None:
        return fault if m == method and pattern.search(p) else None

    return pick
