"""Shared fakes for the alignment tests (imported by them; the checks here test the fakes themselves).

- :class:`FakeOpenAI`: a small OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1 (stdlib
  http.server in a thread), answering with a scripted function and recording every request.
- :class:`ScriptedBackend`: a sampling backend that returns given texts and counts its calls,
  optionally failing after some calls (an interrupted sampling pass).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tempa.alignment.backends import SamplingBackend
from tempa.alignment.completions import Completion


def chat_response(texts: list[str], finish: str = "stop", reasoning: list[str | None] | None = None) -> dict[str, Any]:
    """An OpenAI chat-completions response body with one choice per text."""
    choices = []
    for i, text in enumerate(texts):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning is not None and reasoning[i] is not None:
            message["reasoning_content"] = reasoning[i]
        choices.append({"index": i, "message": message, "finish_reason": finish})
    return {"id": "cmpl-test", "object": "chat.completion", "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 7 * len(texts), "total_tokens": 5 + 7 * len(texts)}}


# reply(body) -> response body, or (status, body, headers)
Reply = Callable[[dict[str, Any]], Any]


class FakeOpenAI:
    """`with FakeOpenAI(reply) as server:` ... ``server.base_url`` is `http://127.0.0.1:PORT/v1`."""

    def __init__(self, reply: Reply, models: Callable[[dict[str, str]], Any] | None = None) -> None:
        self.reply = reply
        self.models = models  # headers -> `GET /v1/models` reply, as `reply` gives one; None: no such route
        self.gets: list[dict[str, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client never holds the test

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                result = fake.reply(body)
                status, payload, headers = result if isinstance(result, tuple) else (200, result, {})
                self._send(status, payload, headers)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.gets.append(dict(self.headers))
                if self.path != "/v1/models" or fake.models is None:
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                result = fake.models(dict(self.headers))
                status, payload, headers = result if isinstance(result, tuple) else (200, result, {})
                self._send(status, payload, headers)

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


class ScriptedBackend(SamplingBackend):
    """Returns ``texts(prompt_text, sample_index)`` for each sample; counts calls; may fail after some."""

    def __init__(self, texts: Callable[[str, int], str] | None = None, *, fail_after: int | None = None,
                 finish_reason: str = "stop") -> None:
        self.texts = texts or (lambda prompt, j: f"answer {j} to {prompt}")
        self.fail_after = fail_after
        self.finish_reason = finish_reason
        self.calls = 0
        self.prompts_seen: list[str] = []
        self.seeds: list[int] = []
        self.describe = "scripted"

    def sample(self, prompts, params, *, thinking_modes=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("backend went away")
        self.calls += 1
        self.seeds.append(params.seed)
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            self.prompts_seen.append(text)
            out.append([Completion(text=self.texts(text, j), finish_reason=self.finish_reason, completion_tokens=3)
                        for j in range(params.n)])
        return out


def test_fake_server_records_requests_and_replies():
    import urllib.request

    with FakeOpenAI(lambda body: chat_response(["hi"] * body["n"])) as server:
        request = urllib.request.Request(
            server.base_url + "/chat/completions", data=json.dumps({"n": 2, "messages": []}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read())
    assert [c["message"]["content"] for c in answer["choices"]] == ["hi", "hi"]
    assert server.requests == [{"n": 2, "messages": []}]
