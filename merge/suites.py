"""Evaluation suites: run a suite's rows through one candidate model and score the results.

The scoring itself is pure (``merge.answers``, ``merge.ifeval``, ``merge.language``); this module
generates (through a :class:`~tempa.alignment.generation.GenerationBackend`, with answers cached
per prompt so suites sharing rows generate once), computes held-out loss, and calls
lm-evaluation-harness when a recipe asks for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from tempa.alignment.generation import GenerationBackend, GenerationParams, Tools
from tempa.alignment.prompts import answer_problem
from tempa.chat_templates.expand import expand
from tempa.chat_templates.thinking import THINK_TAGS, mode_kwargs, rendered_prefill, split_reasoning
from tempa.merge import answers, ifeval
from tempa.merge.eval_data import chat_messages, prompt_messages, row_tools
from tempa.merge.evaluate_config import (
    AccuracySuite,
    EvalGeneration,
    IFEvalSuite,
    LanguageSuite,
    LmEvalSuite,
    LossSuite,
    Suite,
    ThinkingFormatSuite,
    WinRateSuite,
)
from tempa.merge.language import language_scores, reasoning_scores
from tempa.merge.win_rate import (
    PAIRWISE_RUBRIC,
    PairwiseJudging,
    answer_conversations,
    consistency,
    judge_pairs,
    pairwise_row,
    pairwise_rows,
    row_score,
    win_rates,
)
from tempa.sft.curation import check_tool_results
from tempa.sft.formats import RowError, composed, thinking_mode_of
from tempa.sft.language import detect as detect_language
from tempa.sft.language import reasoning_verdict
from tempa.sft.stage_api import StageError
from tempa.sft.suggest import closest, one_slip_from

Messages = list[dict[str, Any]]


class CandidateScorer:
    """One loaded candidate: generates (memoised) and scores suites against it."""

    def __init__(
        self,
        backend: GenerationBackend,
        tokenizer,
        generation: EvalGeneration,
        *,
        seed: int = 0,
        think_tags: tuple[str, str] = THINK_TAGS,
        model=None,
        lm_eval_seed: int | None = None,
        pairwise: PairwiseJudging | None = None,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.generation = generation
        self.seed = seed
        self.open_tag, self.close_tag = think_tags
        self.model = model if model is not None else getattr(backend, "model", None)
        self._cache: dict[tuple[str, str | None, int], str] = {}
        # how each generation ended ("stop", "length"; None where the backend cannot tell), by the keys of _cache
        self._finish: dict[tuple[str, str | None, int], str | None] = {}
        self._prefill: dict[tuple[str, str | None], str] = {}
        self.pairwise = pairwise
        # per suite, one record per scored row (prompt, answer, reasoning, finish reason, verdicts): what the
        # evaluate stage writes as the suite's answers file, so every number can be audited row by row
        self.records: dict[str, list[dict[str, Any]]] = {}

    def _keys(self, prompts: Sequence[Messages], modes: Sequence[str | None], limit: int,
              offered: Sequence[Tools | None]) -> list[tuple[str, str | None, int]]:
        return [(json.dumps([p, t], sort_keys=True, ensure_ascii=False), m, limit)
                for p, m, t in zip(prompts, modes, offered, strict=True)]

    def finish_reasons(
        self, prompts: Sequence[Messages], modes: Sequence[str | None], max_new_tokens: int | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[str | None]:
        """How the generation :meth:`complete` gave for each prompt ended: ``"stop"``, ``"length"`` (cut at
        max_new_tokens), or None where the backend does not say."""
        limit = max_new_tokens or self.generation.max_new_tokens
        offered = list(tools) if tools is not None else [None] * len(prompts)
        return [self._finish.get(k) for k in self._keys(prompts, modes, limit, offered)]

    def complete(
        self, prompts: Sequence[Messages], modes: Sequence[str | None], max_new_tokens: int | None = None,
        tools: Sequence[Tools | None] | None = None,
    ) -> list[str]:
        """The assistant text for each prompt (offering its ``tools``): the template's think pre-fill + the model's
        completion."""
        limit = max_new_tokens or self.generation.max_new_tokens
        offered = list(tools) if tools is not None else [None] * len(prompts)
        keys = self._keys(prompts, modes, limit, offered)
        # The chats themselves, not the keys read back: sorted keys would reorder a tool's JSON in the prompt.
        chat_of = {k: (p, t) for k, p, t in zip(keys, prompts, offered, strict=True)}
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            params = GenerationParams(
                max_new_tokens=limit,
                temperature=self.generation.temperature,
                top_p=self.generation.top_p,
                batch_size=self.generation.batch_size,
                n=1,
                seed=self.seed,
            )
            chats = [chat_of[k] for k in todo]
            # Passed on only when a prompt offers tools: a backend written before tools need not take them.
            with_tools = {"tools": [t for _, t in chats]} if any(t for _, t in chats) else {}
            # a sampling backend says how each generation ended (cut at max_new_tokens or not); a plain one does not
            sample = getattr(self.backend, "sample", None)
            outputs = (sample if callable(sample) else self.backend.generate)(
                [messages for messages, _ in chats],
                params,
                thinking_modes=[k[1] for k in todo],  # type: ignore[misc]
                **with_tools,
            )
            for key, (messages, offered_tools), samples in zip(todo, chats, outputs, strict=True):
                text = getattr(samples[0], "text", samples[0])
                self._cache[key] = self.prefill(messages, key[1], offered_tools) + text
                self._finish[key] = getattr(samples[0], "finish_reason", None)
        return [self._cache[k] for k in keys]

    def prefill(self, messages: Messages, mode: str | None, tools: Tools | None = None) -> str:
        key = (json.dumps([messages, tools], sort_keys=True, ensure_ascii=False), mode)
        if key not in self._prefill:
            kwargs = {**mode_kwargs(mode), **({"tools": tools} if tools else {})}
            self._prefill[key] = rendered_prefill(self.tokenizer, messages, kwargs, self.open_tag)
        return self._prefill[key]

    def answer(self, text: str) -> str:
        return answers.final_answer_text(text, self.open_tag, self.close_tag)

    # --- suites ----------------------------------------------------------------------------

    def run(self, suite: Suite, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Scores of one suite, without the suite prefix; its rows' records in ``self.records[suite.key]``."""
        self.records[suite.key] = []
        if isinstance(suite, LossSuite):
            return self.loss(suite, rows)
        if isinstance(suite, AccuracySuite):
            return self.accuracy(suite, rows)
        if isinstance(suite, LanguageSuite):
            return self.language(suite, rows)
        if isinstance(suite, ThinkingFormatSuite):
            return self.thinking(suite, rows)
        if isinstance(suite, IFEvalSuite):
            return self.ifeval(suite, rows)
        if isinstance(suite, WinRateSuite):
            return self.win_rate(suite, rows)
        if isinstance(suite, LmEvalSuite):
            return self.lm_eval(suite)
        raise TypeError(f"unknown suite {type(suite).__name__}")

    def _generate_rows(self, suite, rows: list[dict[str, Any]]) -> list[str]:
        return [text for text, _ in self._generated_rows(suite, rows)]

    def _generated_rows(self, suite, rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        """Each row's assistant text and how its generation ended."""
        prompts = [prompt_messages(row) for row in rows]
        modes = [suite.thinking_mode or row.get("thinking_mode") for row in rows]
        tools = [row_tools(row) for row in rows]
        texts = self.complete(prompts, modes, suite.max_new_tokens, tools)
        return list(zip(texts, self.finish_reasons(prompts, modes, suite.max_new_tokens, tools), strict=True))

    def _record(self, suite: Suite, index: int, row: dict[str, Any], text: str, finish: str | None,
                scores: dict[str, Any], prompt: Any = None) -> None:
        """One row's line of the suite's answers file: what was asked, the answer, the reasoning, how it ended."""
        split = split_reasoning(text, self.open_tag, self.close_tag)
        self.records.setdefault(suite.key, []).append({
            "index": index, **({"id": row["id"]} if "id" in row else {}),
            "prompt": prompt if prompt is not None else prompt_messages(row),
            "answer": self.answer(text), "reasoning": split.reasoning, "finish_reason": finish, **scores})

    def accuracy(self, suite: AccuracySuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        indexed = [(i, row) for i, row in enumerate(rows) if row.get("answer") not in (None, "")]
        rows = [row for _, row in indexed]
        if not rows:
            raise StageError(f"suite '{suite.key}': no row has an 'answer'")
        generated = self._generated_rows(suite, rows)
        replies = [self.answer(text) for text, _ in generated]
        finishes = [finish for _, finish in generated]
        correct = [  # a reply cut at max_new_tokens is wrong, as one still thinking is
            finish != "length"
            and answers.answer_matches(reply, row["answer"], rel_tol=suite.rel_tol, language=row.get("language"))
            for reply, row, finish in zip(replies, rows, finishes, strict=True)
        ]
        for (index, row), (text, finish), ok in zip(indexed, generated, correct, strict=True):
            self._record(suite, index, row, text, finish, {"expected": row["answer"], "correct": ok})
        return {"accuracy": sum(correct) / len(correct), "rows": float(len(rows)),
                "unanswered": answers.unanswered(replies), "truncated": answers.truncated(finishes)}

    def ifeval(self, suite: IFEvalSuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        indexes = [i for i, row in enumerate(rows) if row.get("instructions")]
        parsed = _rows_with_instructions(rows)
        if not parsed:
            raise StageError(f"suite '{suite.key}': no row has 'instructions'")
        generated = self._generated_rows(suite, [row for row, _ in parsed])
        replies = [self.answer(text) for text, _ in generated]
        finishes = [finish for _, finish in generated]
        results = [  # a reply cut at max_new_tokens follows no instruction ("at most N words" included)
            (instructions, [False] * len(instructions) if finish == "length" else ifeval.check_all(instructions, reply))
            for (_, instructions), reply, finish in zip(parsed, replies, finishes, strict=True)
        ]
        for index, (row, _), (text, finish), (_, followed) in zip(indexes, parsed, generated, results, strict=True):
            self._record(suite, index, row, text, finish, {"instructions": [
                {"instruction": spec, "followed": ok} for spec, ok in zip(row["instructions"], followed, strict=True)],
                "followed_all": all(followed)})
        return {**ifeval.ifeval_scores(results), "unanswered": answers.unanswered(replies),
                "truncated": answers.truncated(finishes), "rows": float(len(parsed))}

    def language(self, suite: LanguageSuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        targets = [row.get("language") or suite.language for row in rows]
        if any(t is None for t in targets):
            raise StageError(f"suite '{suite.key}': rows need a 'language' (or set the suite's `language`)")
        generated = self._generated_rows(suite, rows)
        detected, correct, reasoning, replies = [], [], [], []
        for index, (row, (text, finish), target) in enumerate(zip(rows, generated, targets, strict=True)):
            split = split_reasoning(text, self.open_tag, self.close_tag)
            reply = self.answer(text)  # a think block opened after the template's is reasoning, in no answer
            replies.append(reply)
            detected.append(detect_language(reply, suite.languages, min_letters=suite.min_letters))
            verdict = row_correct(row, reply, target)
            # a reply cut at max_new_tokens is wrong where the row can verify anything, as in the other suites
            correct.append(verdict and finish != "length" if verdict is not None else None)
            reasoning.append(reasoning_verdict(split.reasoning, target, suite.reasoning, languages=suite.languages,
                                               min_letters=suite.min_letters, equivalent=suite.equivalent)[0])
            self._record(suite, index, row, text, finish, {
                "target": target, "detected": detected[-1].language,  # None: undetermined (too short, or a Han-only term)
                "correct": correct[-1], "reasoning_in_language": reasoning[-1]})
        return {**language_scores(detected, targets, correct, suite.equivalent), **reasoning_scores(reasoning),
                "unanswered": answers.unanswered(replies), "truncated": answers.truncated([f for _, f in generated]),
                "rows": float(len(rows))}

    def thinking(self, suite: ThinkingFormatSuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        prompts = [prompt_messages(row) for row in rows]
        tools = [row_tools(row) for row in rows]
        scores: dict[str, float] = {}
        ended: list[str | None] = []
        for mode in suite.modes:
            texts = self.complete(prompts, [mode] * len(prompts), suite.max_new_tokens, tools)
            finishes = self.finish_reasons(prompts, [mode] * len(prompts), suite.max_new_tokens, tools)
            ended += finishes
            check = answers.thinking_on_compliant if mode == "on" else answers.thinking_off_compliant
            passed = [check(text, self.open_tag, self.close_tag) for text in texts]
            for index, (row, text, finish, ok) in enumerate(zip(rows, texts, finishes, passed, strict=True)):
                self._record(suite, index, row, text, finish, {"thinking_mode": mode, "compliant": ok,
                                                              "text": text})
            scores[f"{mode}_compliance"] = sum(passed) / len(passed)
        scores["compliance"] = sum(scores[f"{m}_compliance"] for m in suite.modes) / len(suite.modes)
        scores["rows"] = float(len(rows))
        scores["truncated"] = answers.truncated(ended)
        return scores

    def win_rate(self, suite: WinRateSuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Pairwise judge win rate against the suite's baseline, both orders judged (merge.win_rate)."""
        if self.pairwise is None:
            raise StageError(f"suite '{suite.key}': a win-rate suite needs a judge and a baseline (an evaluate stage)")
        parsed = pairwise_rows(rows, suite.turns_field, suite.category_field)
        candidate = answer_conversations(self, parsed, suite.thinking_mode, suite.max_new_tokens)
        baseline = self.pairwise.baseline(suite).get(suite.key, parsed, suite.thinking_mode, suite.max_new_tokens)
        judge = self.pairwise.judge(suite)
        before = judge.unparsable
        first, second = judge_pairs(judge, suite.judge.rubric or PAIRWISE_RUBRIC, candidate, baseline,
                                    suite.language, suite.max_unparsable, where=f"suite '{suite.key}'")
        row_scores = [row_score(a, b) for a, b in zip(first, second, strict=True)]
        scores = win_rates([row.category for row in parsed], row_scores)
        for index, (row, conversation, theirs) in enumerate(zip(parsed, candidate, baseline, strict=True)):
            last = conversation[:-1]  # the last turn's prompt: how that answer's generation ended
            mode = suite.thinking_mode or row.thinking_mode
            finish = self.finish_reasons([last], [mode], suite.max_new_tokens)[0]
            self.records[suite.key].append({
                "index": index, **({"id": rows[index]["id"]} if "id" in rows[index] else {}),
                "prompt": last, "answer": conversation[-1]["content"], "reasoning": None, "finish_reason": finish,
                "category": row.category, "baseline_answer": theirs[-1]["content"],
                "verdict_candidate_first": first[index], "verdict_candidate_second": second[index],
                "score": row_scores[index]})
        agreed = consistency(first, second)
        if agreed == agreed:  # not NaN: some row had two parsed verdicts
            scores["consistency"] = agreed
        scores["unparsable:judge"] = float(judge.unparsable - before)
        scores["truncated"] = answers.truncated([record["finish_reason"] for record in self.records[suite.key]])
        return scores

    def loss(self, suite: LossSuite, rows: list[dict[str, Any]]) -> dict[str, float]:
        chats, texts = [], []
        try:  # a row's tools render as training and serving render them (its definitions, or their JSON text)
            for row in rows:
                if chat := chat_messages(row):
                    mode = suite.thinking_mode or thinking_mode_of(row.get("thinking_mode"), "thinking_mode")
                    chats.append((chat, mode, row_tools(row)))
                elif text := raw_text(row):
                    texts.append(text)
        except StageError as error:
            raise StageError(f"suite '{suite.key}': {error}") from None
        if not chats and not texts:
            raise StageError(f"suite '{suite.key}': no row has 'messages' with an assistant turn or a 'text'")
        if self.model is None:
            raise StageError(f"suite '{suite.key}': held-out loss needs a local model (transformers backend)")
        encoded = [*encode_chats(self.tokenizer, chats, suite.max_length),
                   *encode_texts(self.tokenizer, texts, suite.max_length)]
        nll, tokens = summed_nll(self.model, self.tokenizer, encoded, suite.batch_size)
        if tokens == 0:
            raise StageError(f"suite '{suite.key}': the template marks no assistant tokens in any chat")
        loss = nll / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(tokens)}

    def lm_eval(self, suite: LmEvalSuite) -> dict[str, float]:
        lm_eval, hflm = import_lm_eval(suite.key)
        if self.model is None:
            raise StageError(f"suite '{suite.key}': lm-eval needs a local model (transformers backend)")
        lm = hflm(pretrained=self.model, tokenizer=self.tokenizer, batch_size=suite.batch_size)
        arguments: dict[str, Any] = {
            "tasks": list(suite.tasks),
            "num_fewshot": suite.num_fewshot,
            "limit": suite.limit,
            "apply_chat_template": suite.apply_chat_template,
            "random_seed": self.seed,
            "numpy_random_seed": self.seed,
            "torch_random_seed": self.seed,
        }
        output = lm_eval.simple_evaluate(model=lm, **{**arguments, **suite.args})
        return flatten_lm_eval_results((output or {}).get("results", {}))


def suite_row_problem(suite: Suite, row: dict[str, Any]) -> str | None:
    """Why ``suite`` cannot score ``row`` (one line), or None. Checked for every row when the stage reads its
    data, before any model loads, so that a bad row is named by its line, not found mid-evaluation."""
    try:  # the rule SFT rows follow: true/false are on/off, as other tools write them
        thinking_mode_of(row.get("thinking_mode"), "thinking_mode")
    except RowError as error:
        return str(error)
    # row_correct grades an answer in both; the answer reward's prompts are read by the same rule
    if (isinstance(suite, AccuracySuite | LanguageSuite) and row.get("answer") not in (None, "")
            and (problem := answer_problem(row["answer"])) is not None):
        return f"answer: {problem}"
    if isinstance(suite, LanguageSuite):
        if row.get("language") in (None, ""):
            if suite.language is None:  # what `language` scores with: the row's, else the suite's
                return "no 'language' to score the answer in; give the row one or set the suite's `language`"
        elif (problem := suite.target_problem(row["language"])) is not None:
            return problem
    if isinstance(suite, IFEvalSuite | LanguageSuite) and row.get("instructions"):  # row_correct checks them
        try:
            ifeval.parse_instructions(row["instructions"])
        except ValueError as error:
            return f"bad instructions ({'; '.join(str(error).splitlines()[:3])})"
    if isinstance(suite, LossSuite):
        try:
            chat_messages(row)
        except StageError as error:
            return str(error)
    if isinstance(suite, WinRateSuite):
        try:
            pairwise_row(row, suite.turns_field, suite.category_field)
        except ValueError as error:
            return str(error)
    elif _generates_from(suite, row):
        try:
            prompt = prompt_messages(row)
            row_tools(row)
        except StageError as error:
            return str(error)
        if (stray := check_tool_results(prompt)) is not None:  # the templates refuse to render it
            return stray[1]
    return None


def _generates_from(suite: Suite, row: dict[str, Any]) -> bool:
    """Whether ``suite`` prompts a model with ``row`` (accuracy: rows with an answer; ifeval: with instructions)."""
    if isinstance(suite, AccuracySuite):
        return row.get("answer") not in (None, "")
    if isinstance(suite, IFEvalSuite):
        return bool(row.get("instructions"))
    return isinstance(suite, LanguageSuite | ThinkingFormatSuite)


def _rows_with_instructions(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list]]:
    """Rows with ``instructions`` (checked when read), each with them parsed."""
    return [(row, ifeval.parse_instructions(row["instructions"])) for row in rows if row.get("instructions")]


def row_correct(row: dict[str, Any], answer: str, language: str | None = None) -> bool | None:
    """Correctness of an answer by whatever the row can verify; None when it can verify nothing. Numbers are read
    as ``language`` (the row's, else the suite's) writes them."""
    verdicts = []
    if row.get("answer") not in (None, ""):
        verdicts.append(answers.answer_matches(answer, row["answer"], language=language or row.get("language")))
    if row.get("instructions"):
        verdicts.append(all(ifeval.check_all(ifeval.parse_instructions(row["instructions"]), answer)))
    return all(verdicts) if verdicts else None


def assistant_mask(tokenizer, messages: Messages, thinking_mode: str | None,
                   tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a rendered chat (with its ``tools``) and a 0/1 mask of the assistant's tokens.

    Uses the template's ``{% generation %}`` markers; a template without them falls back to
    rendering each assistant turn's prefix and marking the tokens the turn adds.
    """
    kwargs = {**mode_kwargs(thinking_mode), **({"tools": tools} if tools else {})}
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    ids = list(encoded["input_ids"])
    mask = list(encoded.get("assistant_masks") or [])
    if len(mask) == len(ids) and any(mask):
        return ids, [int(m) for m in mask]
    mask = [0] * len(ids)
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = len(
            tokenizer.apply_chat_template(
                messages[:index], tokenize=True, return_dict=True, add_generation_prompt=True, **kwargs
            )["input_ids"]
        )
        end = len(
            tokenizer.apply_chat_template(messages[: index + 1], tokenize=True, return_dict=True, **kwargs)[
                "input_ids"
            ]
        )
        for position in range(start, min(end, len(ids))):
            mask[position] = 1
    return ids, mask


# The column a suite scores by: its rows without it are left out (a file shared with other suites), none with it is
# nothing to score.
SCORED_BY = {AccuracySuite: "answer", IFEvalSuite: "instructions"}


def rows_problem(suite: Suite, rows: Sequence[dict[str, Any]]) -> str | None:
    """Why a suite's rows give nothing to score (one line), or None. A row without what the suite scores (an answer,
    instructions, an assistant turn or a text) is left out (a file shared with other suites holds such rows), but a
    suite of nothing but such rows, or whose column is misspelt, would fail only when the stage runs, after training."""
    if isinstance(suite, LossSuite) and not any(chat_messages(row) or raw_text(row) for row in rows):
        return ("no row has 'messages' with an assistant turn (its assistant tokens are scored) or a 'text' string "
                "(raw text: every token scored)")
    column = SCORED_BY.get(type(suite))
    if column is None or any(row.get(column) not in (None, "", []) for row in rows):
        return None
    if any(column in row for row in rows):
        return f"every row's {column!r} is empty"
    columns = sorted({name for row in rows for name in row})
    # the hint names the column tempa reads: the user fixes their column, and "did you mean 'answr'" read as if
    # tempa wanted the misspelling
    near = closest(column, columns)
    hint = f"; column {near!r} is not one tempa reads: did you mean {column!r}?" if near else ""
    return f"no row has an {column!r} column (the rows have: {', '.join(columns)}){hint}"


def misspelt_column(suite: Suite, row: dict[str, Any]) -> str | None:
    """Why ``row`` is refused when it lacks the column its suite scores by and has one a slip away (an `anwser`),
    or None. A row without the column is left out (a file shared with other suites holds such rows), and so was one
    whose column is misspelt: its suite scored the other rows, and nothing said one was missing."""
    column = SCORED_BY.get(type(suite))
    if column is None or column in row:
        return None
    # one slip of the keyboard only: a shared file's rows hold other suites' columns spelt much like it
    # (`answer_type`, `answer_key`, ifeval's `instruction_id_list`), and such a row is left out, not refused
    near = next((name for name in row if one_slip_from(name, column)), None)
    if near is None:
        return None
    return f"no {column!r}; column {near!r} is not one tempa reads: did you mean {column!r}?"


def raw_text(row: dict[str, Any]) -> str | None:
    """A loss row's raw text (continued pre-training's held-out documents: every token scored), or None."""
    text = row.get("text")
    return composed(text) if isinstance(text, str) and text.strip() else None  # as the pretrain stage reads it


def encode_chats(tokenizer, chats: Sequence[tuple[Messages, str | None, list[dict[str, Any]] | None]],
                 max_length: int) -> list[tuple[list[int], list[int]]]:
    """(token ids, mask of the scored tokens) of the samples SFT trains each chat (messages, thinking mode, tools) as,
    each cut at ``max_length``: every assistant turn in the rendering inference gives it
    (:mod:`tempa.chat_templates.expand`), a turn without a reasoning trace with thinking off, as a source's default
    `on` trains it, and every turn off in a row whose `thinking_mode` is off. The whole chat rendered in the template's default mode scored an empty
    think block the model is never taught, and history turns as no sample trains them."""

    def render(messages: Messages, thinking: bool, tools: list[dict[str, Any]] | None) -> tuple[list[int], list[int]]:
        return assistant_mask(tokenizer, messages, "on" if thinking else "off", tools)

    encoded = []
    for messages, mode, tools in chats:
        for sample in expand(messages, mode != "off", render, tools):
            encoded.append((sample.input_ids[:max_length], sample.assistant_masks[:max_length]))
    return encoded


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(token ids, all ones) of each raw text as the tokenizer encodes plain text (Llama 3: its bos first, as the
    pretrain stage encodes a document), cut at ``max_length``."""
    out = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])[:max_length]
        out.append((ids, [1] * len(ids)))
    return out


def held_out_nll(
    model, tokenizer, chats: Sequence[tuple[Messages, str | None, list[dict[str, Any]] | None]], max_length: int,
    batch_size: int,
) -> tuple[float, int]:
    """Summed negative log-likelihood of the assistant tokens over ``chats`` (messages, thinking mode, tools), and
    their count."""
    return summed_nll(model, tokenizer, encode_chats(tokenizer, chats, max_length), batch_size)


def summed_nll(model, tokenizer, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the masked tokens of ``encoded`` (ids, 0/1 mask), and their count."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    model.eval()
    for batch in tqdm(batches, desc="held-out loss", disable=len(batches) < 2):
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, (ids, mask) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor([i if m else -100 for i, m in zip(ids, mask, strict=True)])
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(loss)
        count += int((targets != -100).sum())
    return total, count


def import_lm_eval(suite_key: str = "lm_eval"):
    """``(lm_eval, HFLM)``, or a one-line StageError saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise StageError(
            f"suite '{suite_key}' needs lm-evaluation-harness, which is not installed (pip install lm-eval)"
        ) from None
    return lm_eval, HFLM


def flatten_lm_eval_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"task/metric": value}`` from lm-eval's ``results``; stderr and non-numbers dropped.

    lm-eval keys metrics as ``"<metric>,<filter>"``; the filter is kept only when it is not
    ``none`` (``gsm8k/exact_match[strict-match]``).
    """
    flat: dict[str, float] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or metric == "alias":
                continue
            name = metric if filter_name in ("", "none") else f"{metric}[{filter_name}]"
            flat[f"{task}/{name}"] = float(value)
    return flat
