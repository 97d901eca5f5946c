"""Sampling backends: OpenAI-compatible HTTP (against a loopback server), vLLM mapping, transformers."""

from __future__ import annotations

import logging
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from test_alignment_fakes import FakeOpenAI, chat_response, last_user

from tempa.alignment.backends import HTTPBackendConfig, build_backend
from tempa.alignment.backends_http import HTTPBackend, HTTPBackendError, chat_request_body
from tempa.alignment.generation import GenerationParams
from tempa.sft.stage_api import StageError

SECRET = "sk-test-very-secret-4242"


def http(server: FakeOpenAI, **kwargs) -> HTTPBackend:
    defaults = {"timeout_s": 5, "max_retries": 3, "backoff_s": 0.01, "concurrency": 2}
    return HTTPBackend(server.base_url, "teacher-model", **{**defaults, **kwargs})


def test_request_body_maps_sampling_parameters_and_thinking_mode():
    params = GenerationParams(max_new_tokens=64, temperature=0.7, top_p=0.9, n=3, seed=5)
    body = chat_request_body("m", [{"role": "user", "content": "hi"}], params, n=3, seed=11, thinking_mode="off",
                             extra_body={"top_k": 20})
    assert body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3, "temperature": 0.7, "top_p": 0.9,
        "max_tokens": 64, "seed": 11, "top_k": 20,
        "chat_template_kwargs": {"thinking_mode": "off", "enable_thinking": False},
    }
    greedy = chat_request_body("m", [], GenerationParams(), n=1, seed=0, thinking_mode=None,
                               send_chat_template_kwargs=True)
    assert "top_p" not in greedy and "chat_template_kwargs" not in greedy


def test_http_backend_samples_n_per_prompt_with_per_prompt_thinking_mode():
    def reply(body):
        mode = body.get("chat_template_kwargs", {}).get("thinking_mode")
        texts = [f"{last_user(body)}#{i}" for i in range(body["n"])]
        if mode == "on":  # a server with a reasoning parser returns the trace separately
            return chat_response(texts, reasoning=["thought"] * body["n"])
        return chat_response(texts, finish="length")

    with FakeOpenAI(reply) as server:
        backend = http(server)
        params = GenerationParams(n=2, temperature=1.0, seed=100, max_new_tokens=8)
        out = backend.sample([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], params,
                             thinking_modes=["on", "off"])
    assert [[c.text for c in group] for group in out] == [["a#0", "a#1"], ["b#0", "b#1"]]
    assert [c.reasoning for c in out[0]] == ["thought", "thought"] and out[1][0].reasoning is None
    assert [c.finish_reason for c in out[1]] == ["length", "length"]
    bodies = sorted(server.requests, key=last_user)
    assert [b["seed"] for b in bodies] == [100, 102]  # distinct per prompt
    assert [b["chat_template_kwargs"]["enable_thinking"] for b in bodies] == [True, False]
    assert all(b["n"] == 2 and b["max_tokens"] == 8 and b["model"] == "teacher-model" for b in bodies)


def test_http_backend_without_native_n_sends_one_request_per_sample():
    with FakeOpenAI(lambda body: chat_response([f"s{body['seed']}"] * body["n"])) as server:
        out = http(server, supports_n=False).sample([[{"role": "user", "content": "q"}]],
                                                    GenerationParams(n=3, temperature=1.0, seed=7))
    assert [c.text for c in out[0]] == ["s7", "s8", "s9"]
    assert len(server.requests) == 3 and all(b["n"] == 1 for b in server.requests)


def test_http_backend_retries_429_and_5xx_then_succeeds():
    failures = iter([(429, {"error": "slow down"}, {"Retry-After": "0"}), (503, {"error": "loading"}, {})])

    def reply(body):
        return next(failures, chat_response(["done"]))

    with FakeOpenAI(reply) as server:
        backend = http(server)
        out = backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert out[0][0].text == "done"
    assert len(server.requests) == 3 and backend.retries == 2


def test_http_backend_gives_up_with_one_line_and_no_secret(monkeypatch, caplog):
    monkeypatch.setenv("TEACHER_KEY", SECRET)

    def reply(body):
        return 500, {"error": f"internal error, your key was {SECRET}"}, {}

    with FakeOpenAI(reply) as server, caplog.at_level(logging.DEBUG):
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="TEACHER_KEY", max_retries=2,
                                   backoff_s=0.01, timeout_s=5)
        backend = build_backend(config, policy_dir=None, tokenizer_dir=None)  # type: ignore[arg-type]
        with pytest.raises(HTTPBackendError) as err:
            backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    message = str(err.value)
    assert "HTTP 500" in message and "after 2 retries" in message and "\n" not in message
    assert len(server.requests) == 3
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"  # the key is sent ...
    assert SECRET not in message and SECRET not in caplog.text  # ... and never shown
    assert SECRET not in repr(backend) and SECRET not in config.model_dump_json()


def test_http_backend_never_shows_part_of_the_key_a_server_echoes(monkeypatch, caplog):
    """A server that echoes the request's Authorization header (a debugging proxy, an error page) must not
    get the key into an error, a log line or the sampled text: not whole, and not cut in two by the error's
    length limit (the first characters of a key were shown when it straddled the cut)."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    # the padding puts the key's first 8 characters before the 300-character cut of an error body
    echo = {"error": "x" * 262}

    def reply(body):
        auth = server.headers[-1]["Authorization"]
        if body["messages"][-1]["content"] == "fail":
            return 401, {**echo, "auth": auth}, {}
        return chat_response([f"your header was {auth}"])

    with FakeOpenAI(reply) as server, caplog.at_level(logging.DEBUG):
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="TEACHER_KEY", max_retries=0,
                                   timeout_s=5)
        backend = build_backend(config, policy_dir=None, tokenizer_dir=None)  # type: ignore[arg-type]
        out = backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
        with pytest.raises(HTTPBackendError) as err:
            backend.sample([[{"role": "user", "content": "fail"}]], GenerationParams())
    assert "HTTP 401" in str(err.value)
    for text in (str(err.value), caplog.text):
        assert SECRET[:8] not in text, text
    for text in (out[0][0].text,):
        assert SECRET[:8] not in text, text
    assert out[0][0].text == "your header was Bearer ***"


@pytest.mark.parametrize("url", ["http://bob:pw-secret@127.0.0.1:8000/v1", "https://api.example.com/v1?key=sk-abc",
                                 "https://api.example.com/v1#frag"])
def test_http_base_url_with_credentials_or_a_query_is_refused(url):
    """Credentials in base_url never reach the server (urllib sends no userinfo; the path is appended after a
    query), yet the URL is copied into provenance, manifests, the model card and error messages."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="api_key_env") as err:
        HTTPBackendConfig(base_url=url, model="m")
    message = err.value.errors()[0]["msg"]  # what a recipe error shows (recipes/errors.py)
    assert "pw-secret" not in message and "sk-abc" not in message


def test_http_backend_client_errors_are_not_retried():
    with FakeOpenAI(lambda body: (400, {"error": "bad model"}, {})) as server, \
            pytest.raises(HTTPBackendError, match="HTTP 400"):
        http(server).sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert len(server.requests) == 1


def test_a_server_refusing_the_thinking_switch_names_the_setting_that_leaves_it_out():
    """A hosted OpenAI-style API answers 400 to the `chat_template_kwargs` tempa sends by default; the error did not
    say which setting leaves it out."""
    def reply(body):
        if "chat_template_kwargs" in body:
            return 400, {"error": {"message": "Unrecognized request argument supplied: chat_template_kwargs"}}, {}
        return chat_response(["ok"])

    thinking = GenerationParams(thinking_mode="on")
    with FakeOpenAI(reply) as server:
        with pytest.raises(HTTPBackendError) as err:
            http(server).sample([[{"role": "user", "content": "q"}]], thinking)
        assert str(err.value).endswith("set send_chat_template_kwargs: false in the backend")
        assert http(server, send_chat_template_kwargs=False).sample([[{"role": "user", "content": "q"}]],
                                                                   thinking)[0][0].text == "ok"
    with FakeOpenAI(lambda body: (400, {"error": "bad model"}, {})) as server, pytest.raises(HTTPBackendError) as err:
        http(server).sample([[{"role": "user", "content": "q"}]], thinking)
    assert "send_chat_template_kwargs" not in str(err.value)  # another refusal: no such hint


def test_missing_api_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = HTTPBackendConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(StageError, match="NO_SUCH_KEY_VAR"):
        build_backend(config, policy_dir=None, tokenizer_dir=None)  # type: ignore[arg-type]


def test_an_api_key_exported_with_a_line_break_is_sent_without_it_and_never_shown(monkeypatch):
    """A key exported from a secret file (a Kubernetes secret, `$(<file)` of a file an editor saved) ends with a line
    break: http.client refused the header with a ValueError quoting it, key and all, into the terminal and the
    stage's traceback.txt. The key is sent without the whitespace around it; one with a break or space inside is
    refused by the run's check and by the backend, naming the variable, never the value."""
    from tempa.alignment.input_checks import check_api_keys

    monkeypatch.setenv("TEACHER_KEY", f"  {SECRET}\n")
    with FakeOpenAI(lambda body: chat_response(["ok"])) as server:
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="TEACHER_KEY", max_retries=0,
                                   timeout_s=5)
        check_api_keys(config)
        backend = build_backend(config, policy_dir=None, tokenizer_dir=None)  # type: ignore[arg-type]
        out = backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert out[0][0].text == "ok" and server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    for inner in ("\n", "\r\n", " ", "\u00a0"):
        monkeypatch.setenv("TEACHER_KEY", f"{SECRET[:12]}{inner}{SECRET[12:]}")
        for check in (lambda: check_api_keys(config), lambda: build_backend(config, policy_dir=None,
                                                                            tokenizer_dir=None)):
            with pytest.raises(StageError, match="TEACHER_KEY holds a space, line break") as err:
                check()
            message = str(err.value)
            assert SECRET[:12] not in message and SECRET[12:] not in message and "\n" not in message


class RawServer:
    """A loopback server that answers each POST with scripted raw bytes: what FakeOpenAI cannot send (a body
    cut short, an HTML page, bytes that are not UTF-8)."""

    def __init__(self, replies: list[tuple[int, bytes, int | None]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies, self.served = list(replies), 0
        raw = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, data, length = raw.replies[min(raw.served, len(raw.replies) - 1)]
                raw.served += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ok(text: str, finish: str = "stop") -> bytes:
    import json

    return json.dumps(chat_response([text], finish=finish)).encode()


def test_http_backend_retries_a_reply_cut_short():
    """A connection dropped mid-body (a proxy restart, a load balancer's idle cut) is a transient failure like a
    reset: retried, not a bare http.client.IncompleteRead traceback that ends a 300k-prompt run."""
    with RawServer([(200, b'{"choices": [', 500), (200, _ok("fine"), None)]) as server:
        backend = http(server)
        out = backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert out[0][0].text == "fine" and server.served == 2 and backend.retries == 1


@pytest.mark.parametrize(("data", "shows"), [
    (b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway"),  # a proxy's page
    (b'["not", "an", "object"]', '["not", "an", "object"]'),
    (b'{"choices": []}', "no choices"),
    (b'\xff\xfe{"choices": []}', "not UTF-8"),
])
def test_http_backend_odd_replies_are_one_line_errors_naming_url_and_model(data, shows):
    with RawServer([(200, data, None)]) as server, pytest.raises(HTTPBackendError) as err:
        http(server).sample([[{"role": "user", "content": "q"}]], GenerationParams())
    message = str(err.value)
    assert shows in message and "\n" not in message
    assert server.base_url in message and "teacher-model" in message
    assert "supports_n" not in message  # an empty reply is not a server ignoring `n`
    assert "failed after 3 retries" in message and server.served == 4  # retried first, as a 5xx is


@pytest.mark.parametrize("odd", [b'{"id": "x", "choices": [{"message": {"content": "trunc', b'{"error": "overloaded"}'])
def test_http_backend_retries_a_malformed_ok_reply(odd):
    """One truncated JSON body under HTTP 200 (30% of a flaky proxy's replies), or a 200 carrying only an error
    object, stopped an overnight synthesis at once, its batch's other paid answers lost: it is retried."""
    with RawServer([(200, odd, None), (200, _ok("fine"), None)]) as server:
        backend = http(server)
        out = backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert out[0][0].text == "fine" and server.served == 2 and backend.retries == 1


def test_http_backend_content_filter_refusals_are_rows_not_errors():
    """A provider's content filter refuses one prompt of thousands: Azure answers HTTP 400 `content_filter`
    (this stopped the run), OpenAI-style servers `finish_reason: content_filter` with a partial answer (this was
    taken as a finished one). Either way the prompt gets an empty or flagged completion; the run goes on."""
    import json

    azure = json.dumps({"error": {"code": "content_filter", "message": "The response was filtered"}}).encode()
    with RawServer([(400, azure, None), (200, _ok("Here is how to make a b", finish="content_filter"), None),
                    (200, _ok("fine"), None)]) as server:
        backend = http(server, concurrency=1)
        out = backend.sample([[{"role": "user", "content": p}] for p in "abc"], GenerationParams())
    assert [(c.text, c.finish_reason) for g in out for c in g] == [
        ("", "content_filter"), ("Here is how to make a b", "content_filter"), ("fine", "stop")]
    assert server.served == 3 and backend.retries == 0


# --------------------------------------------------------------------------- vLLM


def test_vllm_missing_is_a_one_line_install_hint(monkeypatch):
    from tempa.alignment.backends_vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as if not installed
    with pytest.raises(StageError, match="pip install"):
        import_vllm()


def test_vllm_backend_maps_parameters_and_outputs(monkeypatch, tiny_model_dir, tmp_path):
    from tempa.chat_templates import bake_tokenizer

    tokenizer_dir = tmp_path / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tokenizer_dir)
    calls: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs
            self.llm_engine = types.SimpleNamespace(shutdown=lambda: calls.setdefault("shutdown", True))

        def generate(self, prompts, sampling_params, use_tqdm=True):
            calls["prompts"], calls["sampling"] = prompts, [p.kwargs for p in sampling_params]
            sample = types.SimpleNamespace
            return [types.SimpleNamespace(outputs=[sample(text=f"r{i}-{j}", token_ids=[1] * (j + 2),
                                                          finish_reason="stop" if j == 0 else "length")
                                                   for j in range(p.kwargs["n"])])
                    for i, p in enumerate(sampling_params)]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    from tempa.alignment.backends import VLLMBackendConfig

    backend = build_backend(VLLMBackendConfig(tensor_parallel_size=2, max_model_len=4096),
                            policy_dir=tiny_model_dir, tokenizer_dir=tokenizer_dir)
    params = GenerationParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=3)
    out = backend.sample([[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]], params,
                         thinking_modes=["on", "off"])
    engine = calls["engine"]
    assert engine["model"] == str(tiny_model_dir) and engine["tokenizer"] == str(tokenizer_dir)
    assert engine["tensor_parallel_size"] == 2 and engine["max_model_len"] == 4096
    first = calls["sampling"][0]
    assert {k: first[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")} == {
        "n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 16, "seed": 3}
    assert calls["sampling"][1]["seed"] == 5  # per prompt
    eot = backend.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in first["stop_token_ids"]
    # prompts go in as token ids of the rendered template, exactly one BOS
    ids = calls["prompts"][0]["prompt_token_ids"]
    bos = backend.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids.count(bos) == 1 and ids[0] == bos
    assert [c.text for c in out[1]] == ["r1-0", "r1-1"]
    assert [c.finish_reason for c in out[0]] == ["stop", "length"]
    assert [c.completion_tokens for c in out[0]] == [2, 3]
    assert out[0][0].prefill == "<think>\n" and out[1][0].prefill == "<think>\n</think>\n"
    assert "shutdown" not in calls
    backend.close()  # before training starts on the same GPU: the engine's own process is stopped
    assert calls["shutdown"] and not hasattr(backend, "llm")


# --------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, tiny_model_dir):
    from tempa.alignment.backends import TransformersSampler
    from tempa.chat_templates import bake_tokenizer

    tokenizer_dir = tmp_path_factory.mktemp("tok") / "tok"
    bake_tokenizer(tiny_model_dir, "llama3_thinking", tokenizer_dir)
    return TransformersSampler(tiny_model_dir, tokenizer_dir, device="cpu", show_progress=False)


def test_transformers_sampler_reports_stop_or_length(sampler):
    tok = sampler.tokenizer
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    pad = tok.pad_token_id
    words = tok("one two", add_special_tokens=False)["input_ids"]
    stopped = sampler.decode([*words, eot, pad, pad])
    assert (str(stopped), stopped.finish_reason, stopped.completion_tokens) == ("one two", "stop", len(words) + 1)
    cut = sampler.decode(words)
    assert (cut.finish_reason, cut.completion_tokens) == ("length", len(words))


def test_transformers_sampler_samples_with_prefill_and_seed(sampler):
    params = GenerationParams(n=2, temperature=1.0, max_new_tokens=6, seed=1, batch_size=2)
    prompts = [[{"role": "user", "content": "Hitunglah 2 × 2 + 11."}], [{"role": "user", "content": "hi"}]]
    out = sampler.sample(prompts, params, thinking_modes=["on", "off"])
    assert [len(group) for group in out] == [2, 2]
    assert {c.prefill for c in out[0]} == {"<think>\n"} and {c.prefill for c in out[1]} == {"<think>\n</think>\n"}
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 6 for g in out for c in g)
    again = sampler.sample(prompts, params, thinking_modes=["on", "off"])
    assert [[c.text for c in g] for g in again] == [[c.text for c in g] for g in out]  # seeded
    assert sampler.generate(prompts, params, thinking_modes=["on", "off"]) == [[c.text for c in g] for g in out]


def test_http_backend_reports_requests_retries_and_the_servers_token_counts_when_closed(caplog):
    """A team paying a teacher API by the token saw neither how many requests a stage sent nor how many tokens the
    server counted: the backend kept a request count that nothing reported. Closing it logs one line."""
    failures = iter([(503, {"error": "loading"}, {"Retry-After": "0"})])

    def reply(body):
        if body["messages"][-1]["content"] == "no usage":
            return {"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
        return next(failures, {**chat_response(["a"] * body["n"]),
                               "usage": {"prompt_tokens": 1200, "completion_tokens": 3400 * body["n"]}})

    with FakeOpenAI(reply) as server:
        backend = http(server, concurrency=4)
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
        backend.sample(prompts, GenerationParams(n=2, temperature=1.0))
        caplog.clear()  # the retry's warning
        with caplog.at_level(logging.INFO, logger="tempa.alignment.http"):
            backend.close()
        assert caplog.messages == [f"{backend.describe}: 4 requests (1 retried); the server counted 3,600 prompt + "
                                   "20,400 completion tokens"]
        caplog.clear()
        backend.sample([[{"role": "user", "content": "no usage"}]], GenerationParams())
        with caplog.at_level(logging.INFO, logger="tempa.alignment.http"):
            backend.close()  # a second close reports what was sent since the first
        assert caplog.messages == [f"{backend.describe}: 1 request; the server sent no token counts (`usage`)"]


def test_retry_after_as_seconds_or_as_an_http_date():
    """RFC 9110 lets Retry-After be an HTTP date (some gateways send one with a 503); it was ignored, and the
    client retried on its own backoff, sooner than the server asked."""
    import email.utils
    import time

    from tempa.alignment.backends_http import MAX_BACKOFF_S, _retry_after

    assert _retry_after("7") == 7.0 and _retry_after("0") == 0.0 and _retry_after("9999") == MAX_BACKOFF_S
    assert 18 < _retry_after(email.utils.formatdate(time.time() + 20, usegmt=True)) <= 20
    assert _retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0  # already past: at once
    assert _retry_after("soon") is None and _retry_after("nan") is None and _retry_after(None) is None


def test_a_refused_key_names_the_variable_it_came_from(monkeypatch):
    """HTTP 401 said only "HTTP 401: ...": which of a recipe's teachers and judges, and which key? The error names
    the variable the key came from (never the key), or says that none was sent."""
    monkeypatch.setenv("JUDGE_KEY", "sk-" + "z" * 30)
    with RawServer([(401, b'{"error": "invalid api key"}', None)]) as server:
        config = HTTPBackendConfig(type="http", base_url=server.base_url, model="m", api_key_env="JUDGE_KEY",
                                   max_retries=0)
        with pytest.raises(HTTPBackendError) as err:
            HTTPBackend.from_config(config, show_progress=False).sample([[{"role": "user", "content": "q"}]],
                                                                        GenerationParams())
        assert str(err.value).endswith("; the server does not accept the key in $JUDGE_KEY (api_key_env): set that "
                                       "variable to a valid key for this server") and "zzzz" not in str(err.value)
        with pytest.raises(HTTPBackendError, match="no API key was sent: name the variable that holds it"):
            http(server).sample([[{"role": "user", "content": "q"}]], GenerationParams())


class _Recorder:
    """A loopback server that records who came (method, path, Authorization) and answers 404."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.visits: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def _record(self) -> None:
                recorder.visits.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere/v1/chat/completions"

    def __enter__(self) -> _Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(monkeypatch, status):
    """urllib followed a 301/302/303 and copied the Authorization header onto the redirected request: an endpoint
    behind a redirect (an open one, a proxy's, a load balancer's) handed the teacher's key to the host it named,
    and the error then named the first URL only."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    signed = "?sig=SIGNED-TOKEN-1234"  # a signed redirect's token, which the error must not show
    with _Recorder() as elsewhere, FakeOpenAI(lambda body: (status, {}, {"Location": elsewhere.url + signed})) as server:
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="TEACHER_KEY", max_retries=2,
                                   backoff_s=0.01, timeout_s=5)
        backend = HTTPBackend.from_config(config, show_progress=False)
        with pytest.raises(HTTPBackendError) as err:
            backend.sample([[{"role": "user", "content": "q"}]], GenerationParams())
    assert elsewhere.visits == []
    message = str(err.value)
    assert f"HTTP {status}: the server redirects to {elsewhere.url}" in message and "set base_url" in message
    assert len(server.requests) == 1  # not retried: asking again gets the same redirect
    assert SECRET not in message and "SIGNED-TOKEN" not in message


@pytest.mark.parametrize("status", [301, 307, 308])
def test_the_check_before_the_first_request_refuses_a_redirect_as_the_request_would(monkeypatch, status):
    """A trial: `GET /v1/models` answering 307 passed the check, all 12 prompts were sampled, then the first POST
    failed on the redirect, which tempa never follows: the check exists to stop before anything is paid for."""
    from tempa.alignment.backends_http import check_endpoint

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    signed = "?sig=SIGNED-TOKEN-1234"
    with _Recorder() as elsewhere, FakeOpenAI(lambda body: chat_response(["[[7]]"]),
                                              lambda headers: (status, {}, {"Location": elsewhere.url + signed})) as server:
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="TEACHER_KEY", max_retries=2,
                                   backoff_s=0.01, timeout_s=5)
        with pytest.raises(StageError) as err:
            check_endpoint(HTTPBackend.from_config(config, show_progress=False), "judge 'judge'", "rewards[0].backend")
    assert elsewhere.visits == [] and server.requests == [] and len(server.gets) == 1  # not retried either
    message = str(err.value)
    assert message.startswith(f"judge 'judge' (rewards[0].backend), checked before its first request: GET "
                              f"{server.base_url}/models (model m): HTTP {status}: the server redirects to "
                              f"{elsewhere.url}; tempa follows no redirect")
    assert message.endswith("set base_url to the address that answers")  # not "start its server"
    assert SECRET not in message and "SIGNED-TOKEN" not in message


_SYNTHESIZE = """name: t
base_model: "tempa:tiny"
stages:
  - name: distill
    kind: synthesize
    prompts: {path: prompts.jsonl}
    teacher: %s
    rewards: [{type: format}]
"""


def _refusal(tmp_path, teacher: str) -> str:
    """The one-line error loading a recipe whose synthesize stage has this teacher."""
    from tempa.recipes.errors import RecipeError
    from tempa.recipes.loader import load_recipe

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "r.yaml").write_text(_SYNTHESIZE % teacher)
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "r.yaml")
    message = str(err.value)
    assert f"{tmp_path / 'r.yaml'}:7: stages[0].teacher." in message and "\n" not in message
    return message


@pytest.mark.parametrize(("written", "path"), [
    ("extra_body: {api_key: sk-LITERAL-1}", "extra_body.api_key"),
    ('extra_body: {headers: {Authorization: "Bearer sk-LITERAL-2"}}', "extra_body.headers.Authorization"),
    ('extra_body: {metadata: [{x-api-key: sk-LITERAL-3}]}', "extra_body.metadata[0].x-api-key"),
    # Azure OpenAI "On Your Data": data_sources[].parameters.authentication.key; API Management's header name
    ("extra_body: {data_sources: [{parameters: {authentication: {type: api_key, key: sk-LITERAL-4}}}]}",
     "extra_body.data_sources[0].parameters.authentication.key"),
    ("extra_body: {Ocp-Apim-Subscription-Key: sk-LITERAL-6}", "extra_body.Ocp-Apim-Subscription-Key"),
    ("api_key_env: sk-LITERAL-5abcdefghijklmnop", None),
])
def test_a_key_written_into_an_http_backend_is_refused_without_showing_it(tmp_path, written, path):
    """extra_body took {api_key: sk-...} and the recipe's copies (recipe.resolved.yaml, the manifests, the journals'
    signatures, `tempa plan`) all held it; a key pasted into api_key_env was echoed as a variable that is not set."""
    message = _refusal(tmp_path, f"{{type: http, base_url: 'https://api.example.com/v1', model: m, {written}}}")
    assert "sk-LITERAL" not in message
    assert (f"{path} cannot be set in a recipe" in message) if path else "not the key itself" in message
    # what these fields are for still works
    config = HTTPBackendConfig(base_url="https://api.example.com/v1", model="m", api_key_env="TEACHER_API_KEY",
                               extra_body={"top_k": 20, "max_tokens": 5, "metadata": {"author": "tim"},
                                           "prompt_cache_key": "tempa-synth-v1", "idempotency_key": "x"})
    assert config.extra_body["top_k"] == 20


def test_vllm_engine_args_take_no_pickle_load_format_and_no_token(tmp_path):
    from tempa.alignment.backends import VLLMBackendConfig

    for load_format in ("pt", "npcache", "auto", "PT"):
        message = _refusal(tmp_path, f"{{type: vllm, engine_args: {{load_format: {load_format}}}}}")
        assert f"engine_args.load_format '{load_format}' would unpickle a checkpoint" in message
    message = _refusal(tmp_path, "{type: vllm, engine_args: {hf_token: hf_LITERAL}}")
    assert "engine_args.hf_token cannot be set" in message and "hf_LITERAL" not in message
    assert VLLMBackendConfig(engine_args={"load_format": "safetensors", "max_num_seqs": 64}).engine_args


def test_a_redirects_location_is_shown_without_its_query_however_written():
    """A relative or scheme-relative Location kept its signed query in the error; an IPv6 host lost its brackets."""
    from email.message import Message

    from tempa.alignment.backends_http import _redirected

    def shown(location: str) -> str:
        headers = Message()
        headers["Location"] = location
        return _redirected("POST x (model m)", 302, headers)

    assert "redirects to /v1/chat/completions;" in shown("/v1/chat/completions?token=SECRET2")
    assert "redirects to //cdn.example.com/x;" in shown("//cdn.example.com/x?sig=SECRET3")
    assert "redirects to http://[fd00::5]:8080/x;" in shown("http://user:pw@[fd00::5]:8080/x?sig=SECRET4#frag")
    assert not any(secret in shown(location) for secret, location in
                   (("SECRET2", "/a?token=SECRET2"), ("pw", "https://u:pw@h/x"), ("SECRET4", "h/x#SECRET4")))


def _slow_batch(stop: Callable[[], Any]) -> tuple[FakeOpenAI, Callable[[], Any]]:
    """Eight prompts over two connections to a server whose first request calls ``stop`` (a slow reply otherwise)."""
    def reply(body):
        if last_user(body) == "q0":
            return stop()
        time.sleep(0.3)
        return chat_response(["ok"])

    server = FakeOpenAI(reply)
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    return server, lambda: http(server, concurrency=2, max_retries=0).sample(prompts, GenerationParams())


def test_a_failed_request_stops_the_batch_without_sending_the_rest():
    """Requests not yet sent when one fails are never sent (each would be paid for, then thrown away with the batch):
    the two connections' requests in flight finish and nothing more goes out."""
    server, sample = _slow_batch(lambda: (400, {"error": {"message": "bad request"}}, {}))
    with server, pytest.raises(HTTPBackendError, match="HTTP 400"):
        sample()
    assert len(server.requests) <= 3, [last_user(body) for body in server.requests]


def test_sigterm_mid_batch_sends_no_further_request():
    """SIGTERM (tempa's CLI raises it as an interrupt where the runner waits) while a batch is in flight."""
    import signal

    from tempa.recipes.cli import Terminated

    def terminate(*_: Any) -> None:
        raise Terminated()

    def stop():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.3)
        return chat_response(["ok"])

    previous = signal.signal(signal.SIGUSR1, terminate)
    try:
        server, sample = _slow_batch(stop)
        with server, pytest.raises(Terminated):
            sample()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(server.requests) <= 3, [last_user(body) for body in server.requests]


def test_a_key_refused_at_the_check_before_the_first_request_is_called_refused_not_a_server_to_start(monkeypatch):
    """A trial: a 401 to the pre-flight `GET /models` ended "...the key sent is $JUDGE_API_KEY's (api_key_env); start
    its server or fix base_url": the server is up, the key is what is wrong."""
    from tempa.alignment.backends_http import check_endpoint

    monkeypatch.setenv("JUDGE_KEY", SECRET)
    with FakeOpenAI(lambda body: chat_response(["[[7]]"]),
                    lambda headers: (401, {"error": {"message": f"bad key, you sent: {headers['Authorization']}"}},
                                     {})) as server:
        config = HTTPBackendConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY", max_retries=0)
        with pytest.raises(StageError) as err:
            check_endpoint(HTTPBackend.from_config(config, show_progress=False), "judge 'judge'", "rewards[0].backend")
    message = str(err.value)
    assert "HTTP 401" in message and message.endswith(
        "the server does not accept the key in $JUDGE_KEY (api_key_env): set that variable to a valid key for this "
        "server")
    assert "start its server" not in message and SECRET not in message and server.requests == []
