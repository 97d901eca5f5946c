"""`timeout_s` of the HTTP backend is a deadline for the whole request, not for each socket read.

A real http.server in a thread trickles its reply a byte at a time, each byte well within the timeout: urllib's
own `timeout=` never fires on it, so a request could last as long as the server liked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from test_alignment_fakes import chat_response

from tempa.alignment.backends_http import HTTPBackend, HTTPBackendError
from tempa.alignment.generation import GenerationParams

BYTE_EVERY_S = 0.1
TIMEOUT_S = 1.0


@contextmanager
def trickling_server(*, headers_too: bool, length: bool = True) -> Iterator[tuple[str, list[float]]]:
    """A server that sends its (complete, valid) reply one byte every BYTE_EVERY_S seconds; yields its base URL
    and the times requests arrived."""
    arrivals: list[float] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(chat_response(["slow " * 40])).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n".encode() if length else b"\r\n"
            if not headers_too:
                self.wfile.write(head)
                self.wfile.flush()
            for byte in (head if headers_too else b"") + body:
                if stop.wait(BYTE_EVERY_S):
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/v1", arrivals
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("headers_too", "length"),
    [(False, True), (True, True), (False, False)],
    ids=["body-trickles", "headers-trickle", "body-without-length"],
)
def test_a_trickling_server_times_out_after_timeout_s(headers_too: bool, length: bool) -> None:
    with trickling_server(headers_too=headers_too, length=length) as (url, arrivals):
        backend = HTTPBackend(url, "m", timeout_s=TIMEOUT_S, max_retries=0, concurrency=1)
        start = time.monotonic()
        with pytest.raises(HTTPBackendError) as err:
            backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
        elapsed = time.monotonic() - start
    message = str(err.value)
    assert (
        "failed after 0 retries" in message and f"timeout_s={TIMEOUT_S:g}s" in message and "\n" not in message
    )
    # the whole reply would take over 30 s; the request ends at its deadline
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 1.5, elapsed
    assert len(arrivals) == 1


def test_a_request_past_its_deadline_is_retried_with_a_deadline_of_its_own() -> None:
    with trickling_server(headers_too=False) as (url, arrivals):
        backend = HTTPBackend(url, "m", timeout_s=TIMEOUT_S, max_retries=1, backoff_s=0.01, concurrency=1)
        start = time.monotonic()
        with pytest.raises(HTTPBackendError, match="failed after 1 retries"):
            backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
        elapsed = time.monotonic() - start
    assert len(arrivals) == 2 and backend.retries == 1
    assert arrivals[1] - arrivals[0] >= TIMEOUT_S * 0.9
    assert elapsed < 2 * TIMEOUT_S + 1.5, elapsed
