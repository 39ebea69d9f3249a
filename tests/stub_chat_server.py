"""A stub OpenAI-compatible chat server on 127.0.0.1 for judge-client tests (no network beyond loopback).

``reply(request_body, headers) -> (status, body_text | dict, extra_headers)`` decides every answer;
a dict body is sent as a chat completion whose content is ``body["content"]`` when it has that key,
else as raw JSON. The server counts requests, records the bodies and the largest number of requests
in flight, refuses any request past ``max_requests`` (HTTP 400, so a runaway client fails fast)
and is shut down when the ``with`` block ends.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class StubChatServer:
    def __init__(self, reply, max_requests: int = 200, delay_s: float = 0.0) -> None:
        self.reply, self.max_requests, self.delay_s = reply, max_requests, delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    n = len(stub.requests)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                counted = False
                try:
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    if n > stub.max_requests:
                        status, payload, extra = 400, {"error": "stub request budget spent"}, {}
                    else:
                        status, payload, extra = stub.reply(body, dict(self.headers))
                    if isinstance(payload, dict) and "content" in payload and len(payload) == 1:
                        payload = completion(payload["content"])
                    text = payload if isinstance(payload, str) else json.dumps(payload)
                    data = text.encode("utf-8")
                    with (
                        stub._lock
                    ):  # done before the reply leaves, so a client's next request never overlaps
                        stub.in_flight -= 1
                        counted = True
                    self.send_response(status)
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    if not counted:
                        with stub._lock:
                            stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
