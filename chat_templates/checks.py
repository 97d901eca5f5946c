"""The template invariants, checked against a real tokenizer: one function per invariant, one row per function.

Each check renders the conversations in :mod:`tempa.chat_templates.probes` through
``tokenizer.apply_chat_template`` (the path trl's SFT and inference take) and compares token ids, never just text,
because the classic template bugs (a prompt that is not a token prefix, a mask that misses the end-of-turn token)
only show up after tokenisation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tempa.chat_templates.probes import INVALID_INPUTS, PROBES, Probe
from tempa.chat_templates.rendering import mask_spans, render_with_tokenizer, token_ids, tokenize_chat
from tempa.chat_templates.templates import template_defaults
from tempa.chat_templates.thinking import (
    MODES,
    THINK_CLOSE,
    THINK_OPEN,
    TRIMMED,
    end_of_turn_token,
    mode_kwargs,
)


@dataclass(frozen=True)
class CheckResult:
    """One invariant's verdict: ``detail`` says what was covered, or the first thing that failed."""

    name: str
    passed: bool
    detail: str


def check_tokenizer(
    tokenizer: Any,
    template: str | None = None,
    *,
    generation_config: Any = None,
) -> list[CheckResult]:
    """Run every invariant on ``tokenizer`` with ``template`` (``None``: the tokenizer's own chat template).

    ``generation_config`` (a ``GenerationConfig`` or the dict of a ``generation_config.json``) is what generation
    will stop on; without one, the stop check judges the tokenizer's eos token alone. Never raises for a
    failing invariant: a check that errors is reported as failed with the error as its detail.
    """
    if template is None:
        template = tokenizer.chat_template
        if isinstance(template, Mapping):
            template = template.get("default")
    if not template:
        raise ValueError("the tokenizer has no chat template; pass the template to check")
    context = _Context(tokenizer=tokenizer, template=template, generation_config=generation_config)
    results = []
    for name, check in CHECKS:
        try:
            passed, detail = check(context)
        except Exception as error:  # a check that crashes is a failed check, reported with its cause
            passed, detail = False, f"{type(error).__name__}: {error}"
        results.append(CheckResult(name=name, passed=passed, detail=detail))
    return results


@dataclass(frozen=True)
class _Context:
    tokenizer: Any
    template: str
    generation_config: Any

    def ids(self, messages: list[dict[str, Any]], probe: Probe, **kwargs: Any) -> list[int]:
        return token_ids(self.tokenizer, messages, template=self.template, tools=probe.tools, **kwargs)

    def text(self, messages: list[dict[str, Any]], probe: Probe, **kwargs: Any) -> str:
        return render_with_tokenizer(
            self.tokenizer, messages, template=self.template, tools=probe.tools, **kwargs
        )

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _cases() -> Iterator[tuple[Probe, str]]:
    for probe in PROBES:
        for mode in MODES:
            yield probe, mode


def _covered() -> str:
    return f"{len(PROBES)} conversations x {len(MODES)} modes"


def check_prompt_is_prefix(ctx: _Context) -> tuple[bool, str]:
    """a. The generation-prompt render's tokens are a prefix of the full conversation's tokens."""
    for probe, mode in _cases():
        prompt = ctx.ids(probe.prompt_messages, probe, add_generation_prompt=True, thinking_mode=mode)
        full = ctx.ids(probe.messages, probe, thinking_mode=mode)
        if full[: len(prompt)] != prompt:
            at = next(
                (i for i, (p, f) in enumerate(zip(prompt, full, strict=False)) if p != f),
                min(len(prompt), len(full)),
            )
            return False, (
                f"{probe.name} [{mode}]: tokens diverge at {at}: prompt has {ctx.decode(prompt[at : at + 4])!r}, "
                f"full conversation has {ctx.decode(full[at : at + 4])!r}"
            )
    return True, _covered()


def check_assistant_mask(ctx: _Context) -> tuple[bool, str]:
    """b. Every assistant turn is trained through its end-of-turn token, nothing else is; the last turn's span
    is exactly the tokens generated after the prompt."""
    eot_id = ctx.tokenizer.convert_tokens_to_ids(end_of_turn_token(ctx.template))
    # Special tokens, the headers among them (Llama 3's are added tokens marked special, and not all named as such);
    # not the added tokens a model writes as text, marked not special: Qwen2.5's <tool_call>, Qwen3's <think>
    special = set(ctx.tokenizer.all_special_ids) | {
        token_id for token_id, token in ctx.tokenizer.added_tokens_decoder.items() if token.special}
    for probe, mode in _cases():
        where = f"{probe.name} [{mode}]"
        prompt_only = tokenize_chat(
            ctx.tokenizer,
            probe.prompt_messages,
            template=ctx.template,
            tools=probe.tools,
            add_generation_prompt=True,
            thinking_mode=mode,
        )
        chat = tokenize_chat(
            ctx.tokenizer, probe.messages, template=ctx.template, tools=probe.tools, thinking_mode=mode
        )
        for messages, tokenized in ((probe.prompt_messages, prompt_only), (probe.messages, chat)):
            problem = _turn_spans_problem(ctx, messages, tokenized, eot_id, special)
            if problem:
                return False, f"{where}: {problem}"
        prompt, ids = prompt_only.input_ids, chat.input_ids
        if ids[: len(prompt)] != prompt:
            return (
                False,
                f"{where}: the prompt is not a token prefix (see a), so the trained span is undefined",
            )
        last = mask_spans(chat.assistant_mask)[-1]
        if last != (len(prompt), len(ids) - ids[::-1].index(eot_id)):
            return False, (
                f"{where}: the last turn trains {ctx.decode(ids[last[0] : last[1]])!r}, "
                f"expected what is generated after the prompt: {ctx.decode(ids[len(prompt) :])!r}"
            )
        if probe.answer and probe.answer not in ctx.decode(ids[last[0] : last[1]]):
            return False, f"{where}: the answer {probe.answer!r} is not in the trained tokens"
    return True, f"{_covered()}, prompt and full; headers, prompts and tool results untrained"


def _turn_spans_problem(ctx: _Context, messages: list[dict[str, Any]], chat: Any, eot_id: int, special: set[int]) -> str:
    """One trained span per assistant turn, each ending on the end-of-turn token, no other special token in it."""
    runs = mask_spans(chat.assistant_mask)
    expected = sum(message["role"] == "assistant" for message in messages)
    if len(runs) != expected:
        return f"{len(runs)} trained spans for {expected} assistant turns: {_masked_text(ctx, chat)!r}"
    for start, end in runs:
        span = chat.input_ids[start:end]
        if span[-1] != eot_id:
            return f"a trained span does not end on the end-of-turn token: {ctx.decode(span)!r}"
        inside = next((token for token in span[:-1] if token in special), None)
        if inside is not None:
            return (f"a trained span holds the special token {ctx.decode([inside])!r} (a header or other special "
                    f"token): {ctx.decode(span)!r}")
    return None


def check_stops_at_end_of_turn(ctx: _Context) -> tuple[bool, str]:
    """c. The end-of-turn token is one token, and generation stops on it."""
    tokenizer = ctx.tokenizer
    eot = end_of_turn_token(ctx.template)
    ids = tokenizer.encode(eot, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        return False, f"{eot} is not a single token of this tokenizer (encodes to {ids})"
    eot_id = ids[0]
    stop_ids = _generation_eos_ids(ctx.generation_config)
    if stop_ids is None:
        if tokenizer.eos_token_id == eot_id:
            return True, f"tokenizer eos is {eot} (id {eot_id}); no generation config given"
        return False, (
            f"tokenizer eos is {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), not {eot} (id {eot_id}), "
            "and no generation config lists it: generation would run past the turn (bake the tokenizer)"
        )
    if eot_id in stop_ids:
        return True, (
            f"generation_config eos_token_id {stop_ids} includes {eot} (id {eot_id}); "
            f"tokenizer eos {tokenizer.eos_token!r}"
        )
    return (
        False,
        f"generation_config eos_token_id {stop_ids} lacks {eot} (id {eot_id}): generation would run past the turn",
    )


def check_reasoning_by_mode(ctx: _Context) -> tuple[bool, str]:
    """d. On: the final reasoning sits inside the last <think> block. Off: no reasoning text at all."""
    for probe, mode in _cases():
        where = f"{probe.name} [{mode}]"
        text = ctx.text(probe.messages, probe, thinking_mode=mode)
        block = _last_think_block(text)
        if block is None:
            return False, f"{where}: the final turn has no think block"
        if mode == "on" and block.strip(TRIMMED) != probe.final_reasoning:
            return False, f"{where}: last think block holds {block!r}, expected {probe.final_reasoning!r}"
        if mode == "off":
            if block.strip():
                return False, f"{where}: think block is not empty in thinking-off mode: {block!r}"
            prompt = ctx.text(probe.prompt_messages, probe, add_generation_prompt=True, thinking_mode=mode)
            for reasoning in (probe.final_reasoning, *probe.loop_reasoning, *probe.history_reasoning):
                if reasoning and (reasoning in text or reasoning in prompt):
                    return False, f"{where}: reasoning {reasoning!r} renders in thinking-off mode"
    return True, _covered()


def check_reasoning_rule(ctx: _Context) -> tuple[bool, str]:
    """e. Reasoning before the last user message never renders; reasoning of earlier turns after it (a tool
    loop) renders with thinking on, in the full conversation and in the prompt that continues it."""
    probes = [probe for probe in PROBES if probe.history_reasoning or probe.loop_reasoning]
    for probe in probes:
        for mode in MODES:
            renders = (
                ctx.text(probe.messages, probe, thinking_mode=mode),
                ctx.text(probe.prompt_messages, probe, add_generation_prompt=True, thinking_mode=mode),
            )
            for reasoning in probe.history_reasoning:
                if any(reasoning in text for text in renders):
                    return False, f"{probe.name} [{mode}]: reasoning before the last user message renders: {reasoning!r}"
            for reasoning in probe.loop_reasoning:
                if mode == "on" and not all(reasoning in text for text in renders):
                    return False, f"{probe.name} [on]: tool-loop reasoning {reasoning!r} is missing"
    return True, f"{len(probes)} multi-turn conversations x {len(MODES)} modes, prompt and full"


def check_mode_aliases(ctx: _Context) -> tuple[bool, str]:
    """f. No kwarg == the baked default; enable_thinking=True == "on"; enable_thinking=False == "off"."""
    default = template_defaults(ctx.template).thinking_mode
    unset = ({}, {"thinking_mode": None}, {"enable_thinking": None})
    same_as_on = ({"enable_thinking": True}, {"thinking_mode": "on", "enable_thinking": True})
    same_as_off = ({"enable_thinking": False}, {"thinking_mode": "off", "enable_thinking": False})
    if default == "on":
        same_as_on += unset
    else:
        same_as_off += unset
    for probe in PROBES:
        for messages, prompt in ((probe.messages, False), (probe.prompt_messages, True)):
            on = ctx.text(messages, probe, add_generation_prompt=prompt, thinking_mode="on")
            off = ctx.text(messages, probe, add_generation_prompt=prompt, thinking_mode="off")
            if prompt and on == off:
                return False, f"{probe.name}: the generation prompt is the same in both modes"
            for expected, variants in ((on, same_as_on), (off, same_as_off)):
                for kwargs in variants:
                    if ctx.text(messages, probe, add_generation_prompt=prompt, **kwargs) != expected:
                        return (
                            False,
                            f"{probe.name} ({'prompt' if prompt else 'full'}): {kwargs} renders differently",
                        )
    return True, f"{len(PROBES)} conversations, prompt and full; default {default!r}; None counts as unset"


def check_save_reload_identical(ctx: _Context) -> tuple[bool, str]:
    """g. A tokenizer saved with the template and reloaded renders byte-identical text and identical ids."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="tempa-template-check-") as tmp:
        staged = ctx.tokenizer
        if staged.chat_template != ctx.template:
            # Checking another template than the tokenizer's own: bake it into a copy first.
            staged.save_pretrained(f"{tmp}/a")
            staged = AutoTokenizer.from_pretrained(f"{tmp}/a")
            staged.chat_template = ctx.template
        staged.save_pretrained(f"{tmp}/b")
        reloaded = AutoTokenizer.from_pretrained(f"{tmp}/b")
    if reloaded.chat_template != ctx.template:
        return False, "the reloaded tokenizer's chat_template differs from the template"
    for probe, mode in _cases():
        for messages, prompt in ((probe.messages, False), (probe.prompt_messages, True)):
            kwargs = {"tools": probe.tools, "add_generation_prompt": prompt, **mode_kwargs(mode)}
            before = render_with_tokenizer(ctx.tokenizer, messages, template=ctx.template, **kwargs)
            after = render_with_tokenizer(reloaded, messages, **kwargs)
            if before != after:
                return False, f"{probe.name} [{mode}]: text differs after reload"
            if token_ids(ctx.tokenizer, messages, template=ctx.template, **kwargs) != token_ids(
                reloaded, messages, **kwargs
            ):
                return False, f"{probe.name} [{mode}]: token ids differ after reload"
    return True, f"{_covered()}, prompt and full: text and ids"


def check_invalid_input_rejected(ctx: _Context) -> tuple[bool, str]:
    """h. Malformed conversations and mode values raise a template error instead of rendering."""
    import jinja2

    for case in INVALID_INPUTS:
        try:
            text = render_with_tokenizer(
                ctx.tokenizer, case.messages, template=ctx.template, add_generation_prompt=True, **case.kwargs
            )
        except jinja2.TemplateError:
            continue
        except Exception as error:
            return False, f"{case.name}: raised {type(error).__name__} ({error}), not a template error"
        return False, f"{case.name}: rendered instead of raising: {text[:80]!r}"
    return True, f"{len(INVALID_INPUTS)} invalid inputs raise a template error"


def check_pad_token(ctx: _Context) -> tuple[bool, str]:
    """i. pad differs from eos and the end-of-turn token (else collators mask the stop token out of the loss)."""
    tokenizer = ctx.tokenizer
    eot = end_of_turn_token(ctx.template)
    if tokenizer.pad_token is None:
        return False, "the tokenizer has no pad token (bake picks or adds one)"
    if tokenizer.pad_token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(eot)):
        return False, f"pad {tokenizer.pad_token!r} is the eos or end-of-turn token"
    return True, f"pad {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})"


def check_prefix_preserving(ctx: _Context) -> tuple[bool, str]:
    """j. A turn renders the same whether or not it is the last message: every conversation cut after an
    assistant turn is a token prefix of the same conversation continued up to the next user message."""
    count = 0
    for probe, mode in _cases():
        messages = probe.messages
        for cut in range(1, len(messages)):
            if messages[cut - 1]["role"] != "assistant":
                continue
            head = ctx.ids(messages[:cut], probe, thinking_mode=mode)
            stop = next((i for i in range(cut, len(messages)) if messages[i]["role"] == "user"), len(messages))
            for end in range(cut + 1, stop + 1):
                longer = ctx.ids(
                    messages[:end], probe, add_generation_prompt=messages[end - 1]["role"] != "assistant",
                    thinking_mode=mode,
                )
                count += 1
                if longer[: len(head)] != head:
                    return False, (
                        f"{probe.name} [{mode}]: messages[{cut - 1}] renders differently once "
                        f"messages[{cut}:{end}] follow it"
                    )
    return True, f"{count} continuations of {len(PROBES)} conversations x {len(MODES)} modes"


CHECKS: tuple[tuple[str, Callable[[_Context], tuple[bool, str]]], ...] = (
    ("a. prompt is a token prefix", check_prompt_is_prefix),
    ("b. mask = generated tokens + end of turn", check_assistant_mask),
    ("c. generation stops at end of turn", check_stops_at_end_of_turn),
    ("d. reasoning placement by mode", check_reasoning_by_mode),
    ("e. reasoning kept after the last user message only", check_reasoning_rule),
    ("f. default and alias modes", check_mode_aliases),
    ("g. identical after save/reload", check_save_reload_identical),
    ("h. invalid input rejected", check_invalid_input_rejected),
    ("i. pad differs from eos", check_pad_token),
    ("j. turns render the same when not last", check_prefix_preserving),
)


def _masked_text(ctx: _Context, chat: Any) -> str:
    return ctx.decode(
        [token for token, trained in zip(chat.input_ids, chat.assistant_mask, strict=True) if trained]
    )


def _last_think_block(text: str) -> str | None:
    start = text.rfind(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    if start < 0 or end < 0:
        return None
    return text[start + len(THINK_OPEN) : end]


def _generation_eos_ids(generation_config: Any) -> list[int] | None:
    if generation_config is None:
        return None
    value = (
        generation_config.get("eos_token_id")
        if isinstance(generation_config, Mapping)
        else getattr(generation_config, "eos_token_id", None)
    )
    if value is None:
        return None
    return [value] if isinstance(value, int) else list(value)
