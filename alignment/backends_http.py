"""An OpenAI-compatible chat-completions endpoint as a sampling backend (stdlib ``urllib`` only).

Works with `vllm serve`, llama.cpp's `llama-server` and hosted APIs. Each prompt is one
``POST {base_url}/chat/completions`` with ``n``, ``temperature``, ``top_p``, ``max_tokens`` and
``seed`` (and the prompt's ``tools``, the OpenAI field, when it offers some); the thinking mode goes in
``chat_template_kwargs`` (what the OpenAI client sends as
``extra_body``), which vLLM and llama.cpp pass to the chat template. HTTP 429 and 5xx answers and
connection errors (a reset, a body cut short, a timeout) are retried with exponential backoff (honouring
``Retry-After``), at most ``max_retries`` times. ``timeout_s`` bounds each request as a whole (connecting,
sending and reading the entire reply), not each socket read: a server that trickles bytes times out too. A request the provider's content filter refuses (Azure's
HTTP 400 ``content_filter``, or ``finish_reason: content_filter``) is one empty completion with
``finish_reason`` ``"content_filter"``: that row is dropped, the run goes on.
A reply with structured ``tool_calls`` (a server that parses them) is written with the recipe's chat template
as the text a local backend samples for that turn (see :func:`parse_choices`).

The API key is read from the environment variable the recipe names, sent only in the
``Authorization`` header, and scrubbed from every error message.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import functools
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from email.message import Message
from typing import Any

from tempa.alignment.backends import HTTPBackendConfig, SamplingBackend, read_api_key
from tempa.alignment.completions import Completion, written_turn
from tempa.alignment.generation import (
    GenerationParams,
    Messages,
    ThinkingMode,
    Tools,
    resolve_modes,
    resolve_tools,
)
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.formats import RowError, tool_calls_of
from tempa.sft.stage_api import API_USAGE, StageError

log = logging.getLogger("tempa.alignment.http")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0
REACH_TIMEOUT_S = 30.0
# Kept apart from "stop" and "length": a filtered answer may be cut anywhere, so it is never a finished one.
CONTENT_FILTER = "content_filter"
FINISH_REASONS = ("stop", "length", CONTENT_FILTER)
# OpenAI's finish reason of a turn that ended in tool calls: a finished turn, as "stop" is.
TOOL_CALLS = "tool_calls"
SNIPPET_CHARS = 300


class HTTPBackendError(StageError):
    """The endpoint refused or kept failing; the message is one line and carries no secret."""


class _ContentFiltered(Exception):
    """The provider's content filter refused the prompt (one row's refusal, not an error of the run)."""


class _Stopped(Exception):
    """Another request of the call failed for good: this one sends nothing more (no retry after a final failure)."""


class _MalformedReply(Exception):
    """A 200 reply that is no chat completion (cut off, an HTML page, an error object): retried, then an error."""


def chat_request_body(
    model: str,
    messages: Messages,
    params: GenerationParams,
    *,
    n: int,
    seed: int,
    thinking_mode: ThinkingMode | None,
    send_chat_template_kwargs: bool = True,
    extra_body: dict[str, Any] | None = None,
    tools: Tools | None = None,
) -> dict[str, Any]:
    """The JSON body of one chat-completions request (a pure function; tested directly)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": n,
        "temperature": params.temperature,
        "max_tokens": params.max_new_tokens,
        "seed": seed,
    }
    if not params.greedy:
        body["top_p"] = params.top_p
    if tools:
        body["tools"] = tools
    kwargs = mode_kwargs(thinking_mode)
    if send_chat_template_kwargs and kwargs:
        body["chat_template_kwargs"] = kwargs
    body.update(extra_body or {})
    return body


# (assistant turn with structured `tool_calls`, where it came from) -> (prefill, text) as the model wrote it
CallWriter = Callable[[dict[str, Any], str], tuple[str, str]]


def parse_choices(response: dict[str, Any], write_calls: CallWriter | None = None) -> list[Completion]:
    """Completions of one chat-completions response, in choice order.

    A choice with structured ``tool_calls`` (a server that parses them: OpenAI's API, `vllm serve
    --enable-auto-tool-choice`) becomes the text the chat template writes for that turn, through
    ``write_calls``: the form every other backend samples a call in. Its ``finish_reason: tool_calls`` is a
    finished turn (``stop``)."""
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    out = []
    for position, choice in enumerate(choices):
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        reasoning = reasoning if isinstance(reasoning, str) else None
        finish = "stop" if choice.get("finish_reason") == TOOL_CALLS else choice.get("finish_reason")
        completion = Completion(
            text=message.get("content") or "",
            finish_reason=finish if finish in FINISH_REASONS else None,
            completion_tokens=None,  # `usage` counts all choices together
            reasoning=reasoning,
        )
        if message.get("tool_calls"):
            where = f"choices[{position}].message.tool_calls"
            if write_calls is None:
                raise ValueError(f"{where}: a reply with tool calls needs the chat template to write them as text")
            turn = {"role": "assistant", "content": completion.text, "reasoning_content": reasoning,
                    "tool_calls": sampled_tool_calls(message["tool_calls"], where)}
            completion.prefill, completion.text = write_calls(turn, where)
            completion.reasoning = None  # written into the text, as the template writes it
        out.append(completion)
    usage = response.get("usage") or {}
    if len(out) == 1 and isinstance(usage.get("completion_tokens"), int):
        out[0].completion_tokens = usage["completion_tokens"]
    return out


def sampled_tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """A reply's tool calls in tempa's shape (arguments as canonical JSON text, as the sft row reader stores them).
    Arguments that are no JSON object are kept as the model wrote them: a malformed call is that sample's fault,
    for the rewards to judge, not an error of the run. A call that names no function is the server's (ValueError)."""
    if not isinstance(calls, list):
        raise ValueError(f"{where}: expected a list of tool calls, got {type(calls).__name__}")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]):
            raise ValueError(f"{where}[{i}]: expected a call naming its function (`function.name`), got "
                             f"{_snippet(json.dumps(call, ensure_ascii=False))}")
        try:
            out.extend(tool_calls_of([call], where) or [])
        except RowError:
            out.append({"id": call.get("id"), "type": "function",
                        "function": {"name": function["name"], "arguments": function.get("arguments")}})
    return out


class HTTPBackend(SamplingBackend):
    """Samples from an OpenAI-compatible server, ``concurrency`` requests at a time."""

    seeds_by_place = True  # each request carries its own seed (:func:`tempa.alignment.backends.sample_at`)
    reports_each_reply = True  # sample's on_result: each reply as it arrives

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        concurrency: int = 8,
        supports_n: bool = True,
        send_chat_template_kwargs: bool = True,
        extra_body: dict[str, Any] | None = None,
        show_progress: bool = True,
        tokenizer_dir: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
        api_key_env: str | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.api_key_env = api_key_env  # where the key came from: a refused key's error names it
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.supports_n = supports_n
        self.send_chat_template_kwargs = send_chat_template_kwargs
        self.extra_body = dict(extra_body or {})
        self.show_progress = show_progress
        self.describe = f"http:{model}@{base_url}"
        # What was sent since the last close() (which reports it): requests, retries, and the server's `usage`.
        self.requests_sent = 0
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._counted_usage = False
        self._count_lock = threading.Lock()
        # The recipe's tokenizer writes a reply's structured tool calls as text; loaded at the first such reply.
        self.tokenizer_dir = tokenizer_dir
        self.trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: HTTPBackendConfig, *, show_progress: bool = True,
                    tokenizer_dir: str | os.PathLike | None = None, trust_remote_code: bool = False) -> HTTPBackend:
        api_key = None
        if config.api_key_env:
            try:
                api_key = read_api_key(config.api_key_env)
            except StageError as exc:
                raise StageError(f"http backend: api_key_env: {exc}") from None
        return cls(
            config.base_url, config.model, api_key=api_key, timeout_s=config.timeout_s,
            max_retries=config.max_retries, backoff_s=config.backoff_s, concurrency=config.concurrency,
            supports_n=config.supports_n, send_chat_template_kwargs=config.send_chat_template_kwargs,
            extra_body=config.extra_body, show_progress=show_progress, tokenizer_dir=tokenizer_dir,
            trust_remote_code=trust_remote_code, api_key_env=config.api_key_env,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"HTTPBackend({self.describe})"

    @property
    def _where(self) -> str:
        """What an error names: the URL and the model (which of several teachers and judges failed)."""
        return f"POST {self.url} (model {self.model})"

    # ------------------------------------------------------------------ requests

    def _scrub(self, text: str) -> str:
        """``text`` without the key: as sent, and as a JSON string escapes it (a server that echoes it back)."""
        if not self._api_key:
            return text
        for form in dict.fromkeys((self._api_key, json.dumps(self._api_key)[1:-1])):
            text = text.replace(form, "***")
        return text

    def _post(self, body: dict[str, Any], stop: threading.Event | None = None) -> dict[str, Any]:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise _Stopped
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with self._count_lock:
                    self.requests_sent += 1
                status, reply_headers, raw = _exchange(request, self.timeout_s)
            except (OSError, http.client.HTTPException) as exc:
                # OSError: refused, reset, timed out (URLError, ConnectionError, TimeoutError); HTTPException: the
                # connection dropped mid-reply (IncompleteRead, RemoteDisconnected) or a garbled status line.
                reason = self._scrub(str(getattr(exc, "reason", exc))) or type(exc).__name__
            else:
                if status < 300:
                    try:
                        return self._parsed(raw)
                    except _MalformedReply as exc:  # a proxy's cut-off body, an error object under 200: retried
                        reason = str(exc)
                else:
                    # Scrubbed before it is cut: a key across the cut would keep its first characters.
                    text = self._scrub(raw.decode("utf-8", "replace"))
                    if _content_filtered(status, text):
                        raise _ContentFiltered from None
                    detail = _snippet(text)
                    if 300 <= status < 400:
                        raise HTTPBackendError(_redirected(self._where, status, reply_headers)) from None
                    if status not in RETRY_STATUS:
                        raise HTTPBackendError(f"{self._where}: HTTP {status}: {detail}{self._key_hint(status)}"
                                               f"{self._field_hint(status, text)}") from None
                    reason = f"HTTP {status}: {detail}"
                    retry_after = _retry_after(reply_headers.get("Retry-After") if reply_headers else None)
            if attempt >= self.max_retries:
                raise HTTPBackendError(f"{self._where}: failed after {attempt} retries: {reason}")
            with self._count_lock:
                self.retries += 1
            self._wait(attempt, reason, retry_after, stop=stop)
            attempt += 1

    def _key_hint(self, status: int) -> str:
        """For a refused key (401, 403): which key was sent, by its variable (never its value), or that none was."""
        if status not in (401, 403):
            return ""
        if self._api_key is None:
            return "; no API key was sent: name the variable that holds it in the backend's api_key_env"
        if not self.api_key_env:
            return ""
        if status == 401:
            return (f"; the server does not accept the key in ${self.api_key_env} (api_key_env): set that variable to "
                    "a valid key for this server")
        return (f"; the key in ${self.api_key_env} (api_key_env) is not allowed this request: check that key's access "
                "to this model")

    def _field_hint(self, status: int, text: str) -> str:
        """For a request refused over the thinking switch tempa sends (hosted APIs take no `chat_template_kwargs`):
        the setting that leaves it out."""
        if status in (400, 422) and self.send_chat_template_kwargs and "chat_template_kwargs" in text:
            return ("; this server takes no chat_template_kwargs (the thinking switch): set send_chat_template_kwargs: "
                    "false in the backend")
        return ""

    def _wait(self, attempt: int, reason: str, retry_after: float | None = None, where: str | None = None,
              stop: threading.Event | None = None) -> None:
        """Sleep before retry ``attempt + 1``: what the server asked for, else exponential backoff with jitter.
        ``where``: the request retried (default: the chat completions POST); ``stop``: cuts the sleep short."""
        delay = retry_after if retry_after is not None else min(MAX_BACKOFF_S, self.backoff_s * 2**attempt)
        delay *= 1.0 if retry_after is not None else random.uniform(0.8, 1.2)
        log.warning("%s: %s; retry %d/%d in %.1fs", where or self._where, reason, attempt + 1, self.max_retries,
                    delay)
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    def check_reachable(self) -> None:
        """Raise HTTPBackendError (one line) when the server cannot be reached at all: refused, no such host, no answer
        within ``timeout_s``, retried as a request is; or when it refuses the key (HTTP 401 to ``GET {base_url}/models``
        with the key the requests send: a judge's wrong key was found after the teacher's whole pass), or when it
        redirects (3xx): tempa follows no redirect, so every request would be refused the same way, after the
        samples were paid for. Any other HTTP answer, an error status included (a server without that route), counts
        as reachable. Each try waits at most ``REACH_TIMEOUT_S``."""
        url = self.url.removesuffix("/chat/completions") + "/models"
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        attempt = 0
        while True:
            try:
                # A server that is up answers this at once, however busy its generation is; a dropped connection
                # would otherwise hold each try for the whole timeout_s (300 s by default).
                status, reply_headers, raw = _exchange(urllib.request.Request(url, headers=headers, method="GET"),
                                                       min(self.timeout_s, REACH_TIMEOUT_S))
                if 300 <= status < 400:
                    raise HTTPBackendError(_redirected(f"GET {url} (model {self.model})", status, reply_headers))
                text = self._scrub(raw.decode("utf-8", "replace"))
                # Not a 403, nor a 401 over a missing scope or permission: OpenAI's restricted project keys may list
                # no models ("Missing scopes: api.model.read") and still generate.
                if status == 401 and not re.search(r"scope|permission", text, re.IGNORECASE):
                    raise HTTPBackendError(f"GET {url} (model {self.model}): HTTP 401: {_snippet(text)}"
                                           f"{self._key_hint(401)}")
                return
            except (OSError, http.client.HTTPException) as exc:
                reason = self._scrub(str(getattr(exc, "reason", exc))) or type(exc).__name__
            if attempt >= self.max_retries:
                raise HTTPBackendError(f"GET {url} (model {self.model}): the server cannot be reached after {attempt} "
                                       f"retries: {reason}; start its server or fix base_url")
            self._wait(attempt, reason, where=f"GET {url} (model {self.model})")
            attempt += 1

    def _parsed(self, raw: bytes) -> dict[str, Any]:
        """A 200 reply as a JSON object with choices, or :class:`_MalformedReply` quoting what came back (a proxy's
        HTML page, a body cut off, an error object), which the request retries as it does a 5xx."""
        try:
            # A server that echoes the Authorization header must not plant the key in the samples
            # (and from there in datasets, scores and error messages quoting a reply).
            text = self._scrub(raw.decode("utf-8"))
        except UnicodeDecodeError:
            text = self._scrub(raw.decode("utf-8", "replace"))
            raise _MalformedReply(f"response is not UTF-8: {_snippet(text)}") from None
        try:
            response = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _MalformedReply(f"response is not JSON ({exc.msg}): {_snippet(text)}") from None
        if not isinstance(response, dict):
            raise _MalformedReply(f"expected a JSON object with `choices`, got {_snippet(text)}")
        if not response.get("choices"):
            raise _MalformedReply(f"the response has no choices: {_snippet(text)}")
        self._count_usage(response.get("usage"))
        return response

    def _count_usage(self, usage: Any) -> None:
        counts = [usage.get(key) if isinstance(usage, dict) else None for key in ("prompt_tokens", "completion_tokens")]
        if all(isinstance(count, int) for count in counts):
            with self._count_lock:
                self.prompt_tokens += counts[0]
                self.completion_tokens += counts[1]
                self._counted_usage = True

    def usage_line(self) -> str:
        """What was sent since the last report: requests, retries and the tokens the server counted (what an API
        bills by)."""
        line = f"{self.requests_sent:,} request{'s' if self.requests_sent != 1 else ''}"
        line += f" ({self.retries:,} retried)" if self.retries else ""
        if self._counted_usage:
            return (f"{line}; the server counted {self.prompt_tokens:,} prompt + {self.completion_tokens:,} "
                    "completion tokens")
        return f"{line}; the server sent no token counts (`usage`)"

    def close(self) -> None:
        """Log what was sent since the last close (a stage closes its teacher when done, or when it fails)."""
        with self._count_lock:
            if self.requests_sent:
                log.info("%s: %s", self.describe, self.usage_line())
                if (usage := API_USAGE.get()) is not None:
                    usage.add(self.requests_sent, self.retries,
                              (self.prompt_tokens, self.completion_tokens) if self._counted_usage else None)
            self.requests_sent = self.retries = self.prompt_tokens = self.completion_tokens = 0
            self._counted_usage = False

    def _one_prompt(self, messages: Messages, params: GenerationParams, seed: int,
                    mode: ThinkingMode | None, tools: Tools | None = None,
                    stop: threading.Event | None = None) -> list[Completion]:
        def body(n: int, s: int) -> dict[str, Any]:
            return chat_request_body(self.model, messages, params, n=n, seed=s, thinking_mode=mode,
                                     send_chat_template_kwargs=self.send_chat_template_kwargs,
                                     extra_body=self.extra_body, tools=tools)

        def write_calls(turn: dict[str, Any], where: str) -> tuple[str, str]:
            return self._write_calls(messages, turn, {**mode_kwargs(mode), "tools": tools}, where)

        if self.supports_n:
            completions = self._completions(body(params.n, seed), params.n, write_calls, stop)
        else:
            completions = [c for j in range(params.n)
                           for c in self._completions(body(1, seed + j), 1, write_calls, stop)]
        return completions

    def _write_calls(self, messages: Messages, turn: dict[str, Any], template_kwargs: dict[str, Any],
                     where: str) -> tuple[str, str]:
        """A reply's turn with structured tool calls as the recipe's chat template writes it (prefill, text)."""
        if self.tokenizer_dir is None:
            raise HTTPBackendError(f"{self._where}: {where}: the reply holds tool calls, and this backend has no "
                                   "tokenizer to write them as the model's text")
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir,
                                                                trust_remote_code=self.trust_remote_code)
        try:
            return written_turn(self._tokenizer, messages, turn, template_kwargs)
        except ValueError as exc:
            names = [call["function"]["name"] for call in turn["tool_calls"]]
            hint = (" (for a template that writes one call per turn, ask for `parallel_tool_calls: false` in "
                    "extra_body)" if len(names) > 1 else "")
            raise HTTPBackendError(f"{self._where}: {where}: the tool calls {names} cannot be written with the "
                                   f"chat template of {self.tokenizer_dir}: {exc}{hint}") from None

    def _completions(self, body: dict[str, Any], n: int, write_calls: CallWriter | None = None,
                     stop: threading.Event | None = None) -> list[Completion]:
        try:
            response = self._post(body, stop)
        except _ContentFiltered:
            return [Completion(text="", finish_reason=CONTENT_FILTER) for _ in range(n)]
        try:
            completions = parse_choices(response, write_calls)
        except ValueError as exc:  # a malformed `tool_calls` list (HTTPBackendError is no ValueError)
            raise HTTPBackendError(f"{self._where}: {exc}") from None
        if not completions:
            raise HTTPBackendError(f"{self._where}: the response has no choices: "
                                   f"{_snippet(json.dumps(response, ensure_ascii=False))}")
        if len(completions) != n:
            raise HTTPBackendError(
                f"{self._where}: asked for n={n} completions, got {len(completions)} "
                "(set supports_n: false for servers that ignore `n`)"
            )
        return completions

    def sample(
        self,
        prompts: list[Messages],
        params: GenerationParams,
        *,
        thinking_modes: Sequence[ThinkingMode | None] | None = None,
        tools: Sequence[Tools | None] | None = None,
        places: Sequence[int] | None = None,
        on_result: Callable[[int, list[Completion]], None] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt. ``on_result(i, completions)`` is called, in this thread, as prompt
        ``i``'s arrive, so that a caller can keep each paid reply at once: a failure or a Ctrl-C later in the call
        loses none. Once a request fails for good (or the call is interrupted) no request is sent any more, not even
        a retry: the ones in flight are waited for, their replies handed to ``on_result``, and the error raised."""
        modes = resolve_modes(len(prompts), params, thinking_modes)
        offered = resolve_tools(len(prompts), tools)
        # Seeds step by n so that prompts never share one, whether or not the server honours `n`; a prompt's place in
        # its batch (``places``) where the call asks only some of it.
        at = list(places) if places is not None else list(range(len(prompts)))
        jobs = [(messages, params, params.seed + place * params.n, mode, t)
                for place, messages, mode, t in zip(at, prompts, modes, offered, strict=True)]
        results: list[list[Completion] | None] = [None] * len(jobs)

        def arrived(i: int, completions: list[Completion]) -> None:
            results[i] = completions
            if on_result is not None:
                on_result(i, completions)

        if self.concurrency == 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                arrived(i, self._one_prompt(*job))
            return results  # type: ignore[return-value]  # all filled
        stop = threading.Event()

        def one(job: tuple[Any, ...]) -> list[Completion]:
            try:
                return self._one_prompt(*job, stop=stop)
            except BaseException:
                stop.set()  # here, before this worker takes the next queued request
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs)))
        futures = {pool.submit(one, job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                arrived(futures[future], future.result())
        except BaseException as exc:
            # The queued requests are never sent and those retrying stop; the ones already sent are paid for, so
            # their replies are waited for and handed over before the error goes up.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, i in futures.items():
                if results[i] is None and not future.cancelled() and future.exception() is None:
                    arrived(i, future.result())
            if isinstance(exc, _Stopped):  # a request that stopped came back before the failure that stopped it
                raise next(e for f in futures if not f.cancelled() and (e := f.exception()) is not None
                           and not isinstance(e, _Stopped)) from None
            raise
        finally:
            pool.shutdown(wait=True)
        return results  # type: ignore[return-value]  # all filled


class _Deadline:
    """A whole request's time limit. urllib's ``timeout`` bounds each socket operation, so a server that sends a
    byte now and then (a stuck proxy, an overloaded server streaming keep-alives) could hold a request forever;
    when this one's time is up it shuts the request's socket down, which ends the read blocked on it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:  # connected just as the time ran out
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's default opener (proxies, HTTPS) whose connections this deadline watches, without following
        redirects: urllib copies the Authorization header onto the redirected request, so a redirect (an open one, a
        proxy's, a load balancer's) would hand the key to whichever host it names."""
        return urllib.request.build_opener(_WatchedHTTPHandler(self), _WatchedHTTPSHandler(self), _NoRedirect())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx comes back as the reply it is (an HTTPError with its Location), for the request to refuse."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown: SSLSocket's would also drop its TLS state under the reading thread.
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched(http.client.HTTPConnection):
    """A connection that hands its socket to a :class:`_Deadline` once connected."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_Watched, deadline=self._deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            functools.partial(_WatchedHTTPS, deadline=self._deadline), req, context=self._context
        )


def _exchange(request: urllib.request.Request, timeout_s: float) -> tuple[int, Message | None, bytes]:
    """Send ``request`` and read the whole reply, error bodies included, within ``timeout_s`` seconds:
    ``(status, headers, body)``. TimeoutError when the time runs out, whatever the socket did then (a reply
    without a Content-Length just ends early when its socket is shut)."""
    with _Deadline(timeout_s) as deadline:
        try:
            try:
                with deadline.opener().open(request, timeout=timeout_s) as response:
                    reply = response.status, response.headers, response.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    reply = exc.code, exc.headers, exc.read()
        except (OSError, http.client.HTTPException):
            if not deadline.expired:
                raise
        if deadline.expired:
            raise TimeoutError(f"no complete response within timeout_s={timeout_s:g}s")
    return reply


def _redirected(where: str, status: int, headers: Message | None) -> str:
    location = (headers.get("Location") if headers else None) or "(no Location)"
    # its address without a query, fragment or user, relative or not: a signed redirect carries its token there
    parts = urllib.parse.urlsplit(location)
    location = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))
    return (f"{where}: HTTP {status}: the server redirects to {_snippet(location)}; tempa follows no redirect (the "
            "request and its API key would go to the address it names): set base_url to the address that answers")


def _snippet(text: str) -> str:
    """The start of a reply on one line (an error message quotes it)."""
    return " ".join(text[:SNIPPET_CHARS].split()) or "(empty body)"


def _content_filtered(status: int, text: str) -> bool:
    """Azure OpenAI refuses a prompt its content filter flags with HTTP 400 and ``error.code`` content_filter: a
    refusal of that one row, not a broken request (which would stop the run)."""
    if status != 400:
        return False
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "content_filter"


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (capped at ``MAX_BACKOFF_S``): a number of seconds, or the HTTP
    date RFC 9110 also allows (a gateway's 503 may send one); None for anything else."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110's dates are GMT; a date without a zone is read so
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return min(MAX_BACKOFF_S, max(0.0, seconds)) if math.isfinite(seconds) else None


def check_endpoint(backend: Any, who: str, field: str, where: str = "") -> None:
    """Refuse a backend whose server cannot be reached (:meth:`HTTPBackend.check_reachable`), in one line naming the
    recipe field and the URL, before a stage sends it work; any other backend (a local model, a test's) passes.
    ``where``: what of the stage asks (a preference round), empty where the runner's "stage 'X' failed" says it."""
    if not isinstance(backend, HTTPBackend):
        return
    try:
        backend.check_reachable()
    except StageError as exc:
        raise StageError(f"{f'{where}: ' if where else ''}{who} ({field}), checked before its first request: {exc}") \
            from None
