"""SFT data pipeline, pure parts: config, formats, curation filters, mixing, expansion.

Each filter is exercised on crafted rows, positive and negative, so a filter that drops too
much fails as surely as one that drops too little.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tempa.chat_templates.expand import Sample, expand
from tempa.sft import curation, language
from tempa.sft.data_config import (
    CurationConfig,
    DataConfig,
    DedupConfig,
    LanguageFilterConfig,
    PIIConfig,
    SourceConfig,
    TemplateFilterConfig,
)
from tempa.sft.formats import FormatSpec, RowError, normalize_row, spec_for
from tempa.sft.mixing import assign_thinking, select_rows, split_heldout


def _src(tmp_path: Path, **kwargs) -> SourceConfig:
    path = tmp_path / "x.jsonl"
    path.write_text("")
    return SourceConfig.model_validate({"name": "s", "path": str(path), **kwargs})


def _user(text: str) -> dict:
    return {"role": "user", "content": text, "reasoning_content": None}


def _asst(text: str, trace: str | None = None) -> dict:
    return {"role": "assistant", "content": text, "reasoning_content": trace}


# --- config ---------------------------------------------------------------------------------------


def test_missing_local_file_is_a_validation_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        DataConfig.model_validate(
            {"sources": [{"name": "a", "path": "data/nope.jsonl"}]}, context={"base_dir": str(tmp_path)}
        )
    assert str(tmp_path / "data" / "nope.jsonl") in str(info.value)


def test_relative_paths_resolve_against_the_recipe_folder_and_hub_ids_pass(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text("{}\n")
    config = DataConfig.model_validate(
        {"sources": [{"name": "a", "path": "rows.jsonl"}, {"name": "b", "path": "org/some-dataset"}]},
        context={"base_dir": str(tmp_path)},
    )
    assert config.sources[0].path == str(tmp_path / "rows.jsonl")
    assert config.sources[1].path == "org/some-dataset"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"weight": 0.5, "rows": 10}, "at most one of weight, rows, tokens"),
        ({"thinking_mode": "mixed"}, "needs thinking_ratio"),
        ({"thinking_ratio": 0.5}, "only to thinking_mode 'mixed'"),
        ({"heldout": 1.5}, "fraction below 1"),
        ({"colums": {}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_source_settings_fail_validation(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _src(tmp_path, **extra)


def test_bad_regular_expressions_fail_validation() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        PIIConfig(extra_patterns={"ticket": "ABC-(\\d"})


def test_filters_switch_on_with_true_and_duplicate_names_are_refused(tmp_path: Path) -> None:
    cur = CurationConfig.model_validate({"pii": True, "dedup": True, "language": False})
    assert cur.pii == PIIConfig() and cur.dedup == DedupConfig() and cur.language is None
    source = _src(tmp_path).model_dump()
    with pytest.raises(ValidationError, match="duplicate source name"):
        DataConfig.model_validate({"sources": [source, source]})


# --- formats --------------------------------------------------------------------------------------


def test_every_format_normalises_to_the_same_messages(tmp_path: Path) -> None:
    expected = [_user("Apa ibu kota Indonesia?"), _asst("Jakarta.", "Ibu kota Indonesia adalah Jakarta.")]
    spec = spec_for(_src(tmp_path))
    rows = [
        {"messages": [{"role": "user", "content": "Apa ibu kota Indonesia?"},
                      {"role": "assistant", "content": "Jakarta.",
                       "reasoning_content": "Ibu kota Indonesia adalah Jakarta."}]},
        {"conversations": [{"from": "human", "value": "Apa ibu kota Indonesia?"},
                           {"from": "gpt", "value": "<think>\nIbu kota Indonesia adalah Jakarta.\n</think>\n\nJakarta."}]},
        {"prompt": "Apa ibu kota Indonesia?", "response": "Jakarta.", "reasoning": "Ibu kota Indonesia adalah Jakarta."},
        {"prompt": "Apa ibu kota Indonesia?", "completion": "Jakarta.", "thinking": "Ibu kota Indonesia adalah Jakarta."},
        {"instruction": "Apa ibu kota", "input": "Indonesia?", "output": "Jakarta.",
         "reasoning_content": "Ibu kota Indonesia adalah Jakarta."},
        {"prompt": [{"role": "user", "content": "Apa ibu kota Indonesia?"}],
         "completion": [{"role": "assistant", "content": "Jakarta.", "reasoning": "Ibu kota Indonesia adalah Jakarta."}]},
    ]
    for row in rows:
        got = normalize_row(row, spec).messages
        if "input" in row:
            assert got[0]["content"] == "Apa ibu kota\n\nIndonesia?"
            got[0]["content"] = "Apa ibu kota Indonesia?"
        assert got == expected, row


def test_column_mapping_and_role_names_are_configurable(tmp_path: Path) -> None:
    source = _src(
        tmp_path,
        format="sharegpt",
        columns={"messages": "dialog", "role": "speaker", "content": "text", "reasoning": "why",
                 "role_names": {"narrator": "system", "kid": "user", "sage": "assistant"}},
    )
    row = {"dialog": [{"speaker": "narrator", "text": "Be brief."}, {"speaker": "kid", "text": "2+2?"},
                      {"speaker": "sage", "text": "4", "why": "two and two"}]}
    assert normalize_row(row, spec_for(source)).messages == [
        {"role": "system", "content": "Be brief.", "reasoning_content": None}, _user("2+2?"), _asst("4", "two and two")
    ]
    pairs = _src(tmp_path, columns={"prompt": "question", "response": "answer", "system": "persona"})
    got = normalize_row({"question": "Hi", "answer": 5, "persona": "Kind."}, spec_for(pairs)).messages
    # CSV readers type short answers as numbers; they are text again here.
    assert got == [{"role": "system", "content": "Kind.", "reasoning_content": None}, _user("Hi"), _asst("5")]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"messages": "hello"}, "expected 'messages' to be a list of {role, content}, got text that is no JSON list ('hello')"),
        ({"messages": 7}, "expected 'messages' to be a list of {role, content}, got int"),
        ({"messages": []}, "expected 'messages' to be a list of {role, content}, got an empty list"),
        ({"messages": "[{'role': 'user'}]"}, "expected 'messages' to be JSON; Expecting property name"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "unknown role 'narrator'"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "asistant", "content": "y"}]},
         "; did you mean 'assistant'? (map others with the source's columns.role_names)"),
        ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "expected turn 0 'content' to be a string, got dict"),
        ({"messages": [{"content": "x"}]}, "turn 0 has keys ['content']"),
        # no content key is empty content, but not beside the content under a name the reader does not know
        ({"messages": [{"role": "user", "text": "x"}]}, "turn 0 has keys ['role', 'text']"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "answer": "y"}]},
         "turn 1 has keys ['answer', 'role']"),
        ({"text": "just text"}, "expected 'messages', 'conversations', 'prompt'+'response'"),
        ({"prompt": "x", "response": {"a": 1}}, "expected 'response' to be a string, got dict"),
    ],
)
def test_unreadable_rows_raise_one_line_reasons(tmp_path: Path, row: dict, fragment: str) -> None:
    with pytest.raises(RowError) as info:
        normalize_row(row, spec_for(_src(tmp_path)))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_turns_written_as_json_text_read_as_the_list(tmp_path: Path) -> None:
    """CSV has no lists, and Parquet files are often written with each row's turns as JSON text: every row of such a
    source was rejected ('expected 'messages' to be a list of {role, content}', not saying what the rows held)."""
    turns = [{"role": "user", "content": "日本の首都は？"}, {"role": "assistant", "content": "東京です。"}]
    spec = spec_for(_src(tmp_path))
    as_text = normalize_row({"messages": json.dumps(turns, ensure_ascii=False)}, spec).messages
    assert as_text == normalize_row({"messages": turns}, spec).messages == [_user("日本の首都は？"), _asst("東京です。")]


def test_an_unknown_role_in_a_prompts_file_is_told_what_roles_there_are(tmp_path: Path) -> None:
    # A prompts file has no columns.role_names: its error named that SFT field as the way out (a new user's trial);
    # an SFT source's names it as its own.
    from tempa.alignment.prompts import PromptSource, load_prompts
    from tempa.sft.stage_api import StageError

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "customer", "content": "Halo"}]}) + "\n")
    with pytest.raises(StageError, match=r"prompts\.jsonl: line 1: turn 0: unknown role 'customer'; expected one "
                                         r"of .*\bassistant\b.*\buser\b[^(]*$"):
        load_prompts(PromptSource(path=str(path)), seed=0)
    with pytest.raises(RowError, match=r"unknown role 'customer'; .* \(map others with the source's columns\.role_names\)"):
        normalize_row({"messages": [{"role": "customer", "content": "Halo"}]}, spec_for(_src(tmp_path)))


def test_a_row_whose_answer_is_null_is_named_by_its_null_column(tmp_path: Path) -> None:
    """`{"prompt": ..., "response": null}` said "expected ... 'prompt'+'response' ...; found keys ['prompt',
    'response']": both named keys were there, and the message never said which one was null."""
    spec = spec_for(_src(tmp_path))
    with pytest.raises(RowError) as err:
        normalize_row({"prompt": "What is three plus three?", "response": None}, spec)
    assert str(err.value).endswith("found keys ['prompt', 'response'], but 'response' is null (empty)")
    with pytest.raises(RowError) as err:
        normalize_row({"instruction": None, "output": None, "id": 3}, spec)
    assert str(err.value).endswith("found keys ['id', 'instruction', 'output'], but 'instruction' and 'output' are "
                                   "null (empty)")


def test_a_sources_tools_column_can_be_named(tmp_path: Path) -> None:
    """`columns: {tools: functions}` was refused as an unknown field, and rows whose definitions sit in another
    column trained without them; prompts (`tools_field`) and offline pairs could name theirs."""
    weather = {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object"}}
    row = {"messages": [{"role": "user", "content": "Cuaca Jakarta?"},
                        {"role": "assistant", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Jakarta"}}]},
                        {"role": "tool", "content": "31C"}, {"role": "assistant", "content": "31 derajat."}],
           "functions": json.dumps([weather])}
    conversation = normalize_row(row, spec_for(_src(tmp_path, columns={"tools": "functions"})))
    assert conversation.tools == [{"type": "function", "function": weather}]


def test_think_blocks_leave_the_answer_and_a_literal_tag_stays_text() -> None:
    spec = FormatSpec(format="auto")

    def answer(content: str) -> dict:
        return normalize_row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]},
                             spec).messages[1]

    assert answer("<think>\nplan\n</think>\n\nanswer") == _asst("answer", "plan")
    # Raw R1 completions start inside the trace: the template prefilled <think>.
    assert answer("plan\n</think>\n\nanswer") == _asst("answer", "plan")
    assert answer("<think>\n\n</think>\n\nanswer") == _asst("answer")
    # Not in reasoning position: text, kept whole (before the fix the first half became a trace).
    literal = "Write the closing tag </think> after the reasoning."
    assert answer(literal) == _asst(literal)
    # An unclosed block stays in the content, for the reasoning filter to name.
    assert answer("<think>plan, no end") == _asst("<think>plan, no end")


# --- curation: reasoning and role order -----------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([_user("q"), _asst("<think>never closed")], "unclosed think block"),
        ([_user("q"), _asst("answer", "trace with <think> inside")], "think tags inside the reasoning trace"),
        ([_user("q"), _asst("<think>x</think>answer", "trace")], "both as a field and as a think block"),
        ([_user("q"), _asst("answer\n</think>\nmore", "trace")], "both as a field and as a think block"),
        ([_user("q"), _asst("<think>second</think>answer", "first")], "both as a field and as a think block"),
        ([_user("q"), _asst("<think>b</think>c", None)], "more than one think block"),
        ([_user("q"), _asst("   ", "a real trace")], "empty answer after the reasoning"),
    ],
)
def test_malformed_reasoning_is_rejected(messages: list, fragment: str) -> None:
    reason = curation.check_reasoning(messages)
    assert reason is not None and reason[0] == curation.MALFORMED_REASONING
    assert fragment in reason[1]


def test_wellformed_reasoning_passes() -> None:
    assert curation.check_reasoning([_user("q"), _asst("answer", "trace"), _user("q2"), _asst("a2")]) is None
    # A tag mentioned in a sentence is text; a tool call may stand alone after its reasoning.
    assert curation.check_reasoning([_user("q"), _asst("Close it with </think> inline.", "trace")]) is None
    call = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert curation.check_reasoning([_user("q"), {**_asst("", "call f"), "tool_calls": call}]) is None


@pytest.mark.parametrize(
    ("roles", "fragment"),
    [
        (["assistant", "user", "assistant"], "assistant turn at the start"),
        (["user", "user", "assistant"], "two user turns in a row"),
        (["user", "assistant", "assistant"], "assistant turn after an assistant turn"),
        (["user", "system", "assistant"], "system turn after the start"),
        (["user", "assistant", "user"], "does not end with an assistant turn"),
        (["user", "tool", "assistant"], "tool turn not after an assistant turn"),
        (["user", "assistant", "tool", "assistant"], "tool turn not after an assistant turn that calls a tool"),
    ],
)
def test_broken_role_order_is_rejected(roles: list[str], fragment: str) -> None:
    messages = [{"role": r, "content": f"turn {i}", "reasoning_content": None} for i, r in enumerate(roles)]
    reason = curation.check_role_order(messages)
    assert reason is not None and fragment in reason[1]


def test_good_role_orders_pass_and_empty_turns_do_not() -> None:
    call = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    for roles in (["user", "assistant"], ["system", "user", "assistant", "user", "assistant"],
                  ["user", "assistant", "tool", "assistant"], ["user", "assistant", "tool", "tool", "assistant"]):
        messages = [{"role": r, "content": "x", "reasoning_content": None} for r in roles]
        if "tool" in roles:
            messages[1]["tool_calls"] = call
        assert curation.check_role_order(messages) is None, roles
    assert "empty assistant turn" in curation.check_role_order([_user("q"), _asst(" ")])[1]
    # A call with no text is not an empty turn.
    assert curation.check_role_order([_user("q"), {**_asst(""), "tool_calls": call}]) is None


# --- curation: PII --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Kirim ke budi.santoso@gmail.com ya", "email"),
        ("Hubungi saya di +62 812-3456-7890 besok", "phone number"),
        ("WA: 081234567890", "phone number"),
        ("Tawagan mo ako sa +63 917 123 4567", "phone number"),
        ("電話は090-1234-5678です", "phone number"),
        ("Số của tôi là +84 90 123 45 67", "phone number"),
        ("Kartu 4111 1111 1111 1111 exp 12/27", "card number"),
        ("NRIC S1234567D", "Singapore NRIC/FIN"),
        ("IC saya 900101-14-5678", "Malaysian MyKad number"),
        ("NIK 3174055208900001", "Indonesian NIK"),
        ("เลขบัตรประชาชน 1101700203450", "Thai ID number"),
        ("マイナンバーは123456789018です", "Japanese My Number"),
        ("SSN 123-45-6789", "US SSN"),
    ],
)
def test_pii_is_found(text: str, kind: str) -> None:
    assert curation.find_pii(text, PIIConfig()) == kind


@pytest.mark.parametrize(
    "text",
    [
        "12345 + 67890 = 80235",  # arithmetic
        "123456789012 × 7 = 864197523084",
        "Pada tahun 2024 ada 1500 siswa.",
        "The result is 123456789.",
        "Kartu 4111 1111 1111 1112",  # fails Luhn
        "NRIC S1234567A",  # wrong check letter
        "IC 901301-14-5678",  # month 13
        "NIK 3174055213900001",  # month 13
        "เลข 1101700203451",  # wrong Thai check digit
        "1998-2005 dan 17-08-1945",
        "0000 0000 0000 0000",
    ],
)
def test_numbers_that_are_not_pii_pass(text: str) -> None:
    assert curation.find_pii(text, PIIConfig()) is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        # Japanese input methods type digits, @ and hyphens full width; the ASCII forms were caught, these passed.
        ("電話は０９０－１２３４－５６７８です", "phone number"),
        ("電話は090ー1234ー5678です", "phone number"),  # the long-vowel mark typed as a hyphen
        ("連絡先：０３　１２３４　５６７８", "phone number"),  # ideographic spaces
        ("メールはｉｎｆｏ＠ｅｘａｍｐｌｅ．ｃｏ．ｊｐまで", "email"),
        ("マイナンバーは１２３４５６７８９０１８です", "Japanese My Number"),
        ("カード番号４１１１－１１１１－１１１１－１１１１", "card number"),
    ],
)
def test_full_width_pii_is_found_as_its_ascii_form_is(text: str, kind: str) -> None:
    assert curation.find_pii(text, PIIConfig()) == kind


def test_full_width_numbers_that_are_not_pii_pass() -> None:
    assert curation.find_pii("１２３４５ ＋ ６７８９０ ＝ ８０２３５", PIIConfig()) is None
    assert curation.find_pii("２０２４年に１５００人", PIIConfig()) is None
    # A recipe's own patterns still match the text as written, as well as its ASCII form.
    extra = PIIConfig(extra_patterns={"社員番号": r"社員番号：\d{5}"})
    assert curation.find_pii("社員番号：１２３４５", extra) == "社員番号"
    # and an allow pattern written full width allows what it says (the rules match the ASCII form)
    office = PIIConfig(allow=[r"^０３－１２３４－５６７８$"])
    assert curation.find_pii("代表：０３－１２３４－５６７８", office) is None
    assert curation.find_pii("代表：03-1234-5678", office) is None
    assert curation.find_pii("携帯：０９０－１２３４－５６７８", office) == "phone number"


def test_pii_is_configurable() -> None:
    text = "Email admin@example.com or call +62 812-3456-7890"
    assert curation.find_pii(text, PIIConfig(allow=[r"@example\.com$"])) == "phone number"
    assert curation.find_pii(text, PIIConfig(allow=[r"@example\.com$"], phone=False)) is None
    assert curation.find_pii("ticket ABC-12345", PIIConfig(extra_patterns={"ticket id": r"ABC-\d{5}"})) == "ticket id"
    messages = [_user("my card is 4111 1111 1111 1111"), _asst("ok")]
    assert curation.check_pii(messages, PIIConfig())[1] == "turn 0: card number"
    assert curation.check_pii(messages, PIIConfig(roles=["assistant"])) is None


# --- curation: language ---------------------------------------------------------------------------

THAI = "วันนี้อากาศร้อนมาก ฉันอยากสั่งกาแฟหนึ่งถ้วย"
TAGALOG = "Napakainit ng panahon ngayon. Gusto kong umorder ng isang tasa ng kape."
INDONESIAN = "Saya pergi ke pasar untuk membeli buah dan sayur segar."  # py3langid: ms, p 0.62


def _accepted(targets: list[str], config: LanguageFilterConfig) -> frozenset[str]:
    return language.accepted(targets, config.equivalent)


def test_language_filter_keeps_targets_and_rejects_others() -> None:
    config = LanguageFilterConfig()
    thai_row = [_user(THAI), _asst("ขอบคุณมาก ฉันจะเตรียมกาแฟให้เดี๋ยวนี้")]
    assert curation.check_language(thai_row, _accepted(["th"], config), config) is None
    reason = curation.check_language(thai_row, _accepted(["id", "vi"], config), config)
    assert reason is not None and reason[0] == curation.LANGUAGE and "'th'" in reason[1]
    # Filipino is `tl` to the detector; Indonesian targets accept Malay (confusable) by default.
    tagalog = [_user(TAGALOG), _asst("Sige, ihahanda ko ang kape mo ngayon din.")]
    assert curation.check_language(tagalog, _accepted(["fil"], config), config) is None
    assert "ms" in _accepted(["id"], config)
    assert "ms" not in _accepted(["id"], LanguageFilterConfig(equivalent=[]))
    # Too little text to judge: kept.
    assert curation.check_language([_user("2+2?"), _asst("4")], frozenset({"th"}), config) is None
    with pytest.raises(ValidationError, match="did you mean 'tl'"):
        LanguageFilterConfig(equivalent=[["tl", "tagalog"]])


def test_language_filter_reads_prose_and_the_accepted_groups_confidence() -> None:
    # A coding answer: the Python would read as another language; the Indonesian around it decides.
    coding = [_user("Bagaimana cara menghitung faktorial di Python?"),
              _asst("Berikut contoh fungsinya:\n```python\ndef factorial(n):\n    if n == 0:\n        return 1\n"
                    "    return n * factorial(n - 1)\n\nprint(factorial(5))\n```")]
    config = LanguageFilterConfig(check="assistant")
    assert curation.check_language(coding, _accepted(["id"], config), config) is None
    # min_confidence applies to the accepted set: Indonesian split between id and ms by the detector is sure.
    sure = LanguageFilterConfig(min_confidence=0.7)
    assert curation.check_language([_user(INDONESIAN)], _accepted(["id"], sure), sure) is None
    unsure = LanguageFilterConfig(min_confidence=0.7, equivalent=[])
    reason = curation.check_language([_user(INDONESIAN)], _accepted(["ms"], unsure), unsure)
    assert reason is not None and "< min_confidence 0.7" in reason[1]


# --- curation: duplicates and templates -----------------------------------------------------------


def test_exact_and_near_duplicates_keep_the_first() -> None:
    dedup = curation.Deduplicator(DedupConfig())
    base = "Tuliskan sebuah cerita pendek tentang seekor kucing yang tinggal di pasar tradisional Yogyakarta."
    assert dedup.offer(base, "a line 1") is None
    assert dedup.offer("  TULISKAN sebuah cerita pendek tentang seekor kucing yang tinggal di pasar tradisional "
                       "yogyakarta. ", "a line 2") == (curation.EXACT_DUPLICATE, "same instruction as a line 1")
    near = dedup.offer(base.replace("Yogyakarta.", "Yogyakarta!"), "a line 3")
    assert near is not None and near[0] == curation.NEAR_DUPLICATE and "a line 1" in near[1]
    assert dedup.offer("Jelaskan proses fotosintesis pada tumbuhan hijau secara singkat dan jelas.", "a line 4") is None
    exact_only = curation.Deduplicator(DedupConfig(near=False))
    exact_only.offer(base, "x")
    assert exact_only.offer(base.replace("Yogyakarta.", "Yogyakarta!"), "y") is None


def test_template_instructions_are_found_by_skeleton() -> None:
    templated = [f'Translate "{w}" into Thai. Answer with {n} words.' for n, w in enumerate(["cat", "dog", "sun"] * 4)]
    distinct = ["Explain photosynthesis.", "Write a haiku about rain.", "What is 2 + 2?"]
    skeletons = [curation.instruction_skeleton(t, 64) for t in templated + distinct]
    assert len(set(skeletons[:12])) == 1
    reasons = curation.template_rejects(skeletons, TemplateFilterConfig(max_repeats=5))
    assert [r is not None for r in reasons] == [True] * 12 + [False] * 3
    kept_two = curation.template_rejects(skeletons, TemplateFilterConfig(max_repeats=5, keep=2))
    assert [r is None for r in kept_two[:12]] == [True, True] + [False] * 10
    assert all(r is None for r in curation.template_rejects(skeletons, TemplateFilterConfig(max_repeats=12)))


# --- mixing ---------------------------------------------------------------------------------------


def test_sizes_by_weight_rows_and_tokens(tmp_path: Path) -> None:
    candidates = list(range(100, 140))  # 40 conversations
    tokens = [10 + (i % 7) for i in range(40)]
    half = select_rows(candidates, tokens, _src(tmp_path, weight=0.5), 1)
    assert len(half) == 20 and len(set(half)) == 20 and set(half) <= set(candidates)
    up = Counter(select_rows(candidates, tokens, _src(tmp_path, weight=2.5), 1))
    assert sum(up.values()) == 100 and set(up.values()) == {2, 3} and len(up) == 40
    assert len(select_rows(candidates, tokens, _src(tmp_path, rows=50), 1)) == 50
    budget = select_rows(candidates, tokens, _src(tmp_path, tokens=1000), 1)
    spent = sum(tokens[candidates.index(c)] for c in budget)
    assert 1000 - max(tokens) < spent <= 1000 and len(budget) > 40  # cycled past one epoch
    assert select_rows(candidates, tokens, _src(tmp_path), 1) == candidates
    # a half row rounds to the even count, as the docs of `weight` say: 11 x 1.5 = 16.5 -> 16, 13 x 1.5 = 19.5 -> 20
    assert [len(select_rows(list(range(n)), [10] * n, _src(tmp_path, weight=1.5), 1)) for n in (11, 13)] == [16, 20]
    # Deterministic under the seed, different across seeds.
    assert half == select_rows(candidates, tokens, _src(tmp_path, weight=0.5), 1)
    assert half != select_rows(candidates, tokens, _src(tmp_path, weight=0.5), 2)


def test_thinking_assignment_is_exact_and_only_for_rows_with_traces(tmp_path: Path) -> None:
    has = [i % 4 != 0 for i in range(400)]  # 300 rows with a trace
    keys = list(range(400))
    mixed = assign_thinking(has, _src(tmp_path, thinking_mode="mixed", thinking_ratio=0.3), 7, keys)
    assert sum(mixed) == 90 and not any(m and not h for m, h in zip(mixed, has, strict=True))
    assert assign_thinking(has, _src(tmp_path, thinking_mode="on"), 7, keys) == has
    assert not any(assign_thinking(has, _src(tmp_path, thinking_mode="off"), 7, keys))


def test_heldout_split_is_disjoint_and_sized(tmp_path: Path) -> None:
    keys = list(range(1000, 1050))
    train, held = split_heldout(keys, 0.1, 3)
    assert len(held) == 5 and sorted(train + held) == list(range(50))
    assert len(split_heldout(keys, 7, 3)[1]) == 7
    assert split_heldout(keys, 0, 3) == (list(range(50)), [])


# --- expansion (template-agnostic logic) ----------------------------------------------------------


def _fake_render(history_like_final: bool):
    """A naive toy template: one token per character; it renders any trace it is given as "{trace}|"
    (so dropping history and thinking-off traces is expand's job) and, unless
    ``history_like_final``, marks the final assistant turn with a "*" that history turns lack."""

    def render(messages, thinking, tools=None):
        ids, mask = [], []
        for i, m in enumerate(messages):
            final = i == len(messages) - 1
            if m["role"] == "assistant":
                body = m["reasoning_content"] + "|" if m.get("reasoning_content") else ""
                body += ("" if history_like_final or not final else "*") + m["content"]
                body += "".join(f"@{c['function']['name']}" for c in m.get("tool_calls", ())) + "$"
                ids += [ord(c) for c in body]
                mask += [1] * len(body)  # like a template that wraps every assistant turn
            else:
                ids += [ord(c) for c in m["content"] + "#"]
                mask += [0] * (len(m["content"]) + 1)
        return ids, mask

    return render


def _text(sample: Sample, trained: bool) -> str:
    return "".join(chr(i) for i, m in zip(sample.input_ids, sample.assistant_masks, strict=True) if m or not trained)


def test_expansion_trains_each_turn_once_with_history_reasoning_dropped() -> None:
    convo = [_user("q1"), _asst("a1", "r1"), _user("q2"), _asst("a2", "r2")]
    samples = expand(convo, True, _fake_render(history_like_final=True))
    assert [s.turns for s in samples] == [[3], [1]]
    last, first = samples
    assert _text(last, trained=False) == "q1#a1$q2#r2|a2$" and _text(last, trained=True) == "r2|a2$"
    assert _text(first, trained=False) == "q1#r1|a1$" and _text(first, trained=True) == "r1|a1$"


def test_expansion_drops_the_trace_of_a_turn_rendered_with_thinking_off() -> None:
    convo = [_user("q1"), _asst("a1", "r1"), _user("q2"), _asst("a2", "r2")]
    samples = expand(convo, False, _fake_render(history_like_final=True))
    assert len(samples) == 1 and _text(samples[0], trained=False) == "q1#a1$q2#a2$"


def test_expansion_merges_turns_only_when_history_renders_like_generation() -> None:
    convo = [_user("q1"), _asst("a1"), _user("q2"), _asst("a2")]
    merged = expand(convo, False, _fake_render(history_like_final=True))
    assert len(merged) == 1 and merged[0].turns == [1, 3] and _text(merged[0], trained=True) == "a1$a2$"
    split = expand(convo, False, _fake_render(history_like_final=False))
    assert [_text(s, trained=True) for s in split] == ["*a2$", "*a1$"]


def _calls_then(results: list[tuple[str | None, str | None]], then: str | None = "assistant") -> list[dict]:
    """A user turn, a turn calling get_weather (id w) and search (id s), ``results`` as (tool_call_id, name), and a
    ``then`` turn after them (None: the row ends there)."""
    calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}
             for call_id, name in (("w", "get_weather"), ("s", "search"))]
    return [_user("q"), {**_asst(""), "tool_calls": calls},
            *[{"role": "tool", "content": "r", "tool_call_id": call_id, "name": name} for call_id, name in results],
            *([{"role": then, "content": "x"}] if then else [])]


@pytest.mark.parametrize(("results", "then", "detail"), [
    ([("s", "search"), ("w", "get_weather")], "assistant", None),  # by id, in another order
    ([(None, "get_weather"), (None, "search")], "assistant", None),  # by place
    ([(None, None), (None, None)], "user", None),  # nothing to compare: counted only
    ([("w", None)], None, None),  # the row ends before the second result: the role order's to reject
    ([], None, None),  # the row ends on its calls: a call turn trains
    ([(None, "search"), (None, "get_weather")], "assistant", None),  # by name, in another order (no ids)
    ([(None, "search")], "assistant", "turn 1: call 1 of 2 ('get_weather') gets no result before turn 3; expected "
                                      "one result per call"),
    ([(None, "search"), (None, "search")], "assistant", "turn 3: result named 'search' answers no call of turn 1 not "
                                                        "answered yet; expected the name of one of them: 'get_weather'"),
    ([(None, "lookup")], None, "turn 2: result named 'lookup' answers no call of turn 1 not answered yet; expected "
                               "the name of one of them: 'get_weather', 'search'"),
    ([("w", "get_weather"), ("s", "get_weather")], "assistant",
     "turn 3: result named 'get_weather' answers turn 1's call of 'search'; expected the name 'search'"),
    ([("s", None)], "assistant", "turn 1: call 1 of 2 ('get_weather') gets no result before turn 3; expected one "
                                 "result per call"),
    ([(None, None)], "user", "turn 1: call 2 of 2 ('search') gets no result before turn 3; expected one result per "
                             "call"),
    ([("s", None), ("s", None)], "assistant", "turn 1: call 1 of 2 ('get_weather') gets no result before turn 4; "
                                              "expected one result per call"),
])
def test_results_answer_each_call_once_by_id_name_or_place(
        results: list[tuple[str | None, str | None]], then: str | None, detail: str | None) -> None:
    found = curation.check_tool_calls(_calls_then(results, then), None)
    assert found == (None if detail is None else (curation.MALFORMED_ROW, detail))


def test_expansion_keeps_tool_loop_reasoning_and_trains_the_loop_as_one_sample() -> None:
    call = [{"id": None, "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    convo = [_user("q1"), _asst("a1", "r1"), _user("q2"), {**_asst("", "r2"), "tool_calls": call},
             {"role": "tool", "content": "out", "reasoning_content": None, "tool_calls": None, "name": "f"},
             _asst("a2", "r3")]
    seen = []

    def render(messages, thinking, tools=None):
        seen.append(messages)
        return _fake_render(history_like_final=True)(messages, thinking, tools)

    samples = expand(convo, True, render)
    # The loop's call and answer share one sample (the call renders the same when not last); the trace of
    # the turn before the last user message is gone, the loop's own traces stay.
    assert [s.turns for s in samples] == [[3, 5], [1]]
    assert _text(samples[0], trained=False) == "q1#a1$q2#r2|@f$out#r3|a2$"
    assert _text(samples[0], trained=True) == "r2|@f$r3|a2$"
    # None-valued keys never reach the template (it tests keys for presence).
    assert all(None not in m.values() for messages in seen for m in messages)
    assert seen[0][3]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]


# --- JSON Lines sources: read into an Arrow file in the cache ----------------------------------------


def _jsonl_source(tmp_path: Path, data: bytes) -> SourceConfig:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    return SourceConfig.model_validate({"name": "s", "path": str(path)})


def test_a_jsonl_source_reads_every_line_in_order_across_record_batches(tmp_path: Path, monkeypatch) -> None:
    from tempa.sft import sources

    monkeypatch.setattr(sources, "_BATCH_CHARS", 25)  # a record batch every few lines
    lines = [b'\xef\xbb\xbf{"a": 0}', b"", *[b'{"a": %d, "pad": "%s"}' % (i, b"x" * i) for i in range(1, 40)],
             b'{"a": "\xff"}', b"   "]
    source = _jsonl_source(tmp_path, b"\n".join(lines) + b"\n")
    rows = sources.load_source(source, cache_dir=tmp_path / "cache")
    assert len(rows) == len(lines)
    expected = [line.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace") for line in lines]
    assert rows[sources.RAW] == expected
    errors = rows[sources.READ_ERROR]
    assert errors[-2] == "invalid UTF-8 (byte 0xff at column 8)"
    assert [e for i, e in enumerate(errors) if i != len(lines) - 2] == [None] * (len(lines) - 1)


@pytest.fixture
def reading_bars(monkeypatch) -> list[Any]:
    """The progress bars JSON Lines reads open, each shown at once (a real read waits a few seconds)."""
    from tqdm.auto import tqdm

    from tempa.sft import sources

    bars: list[tqdm] = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(sources, "tqdm", Recorded)
    monkeypatch.setattr(sources, "_PROGRESS_DELAY_S", 0)
    return bars


def test_a_long_jsonl_read_shows_a_bar_that_ends_at_the_file_size(
    tmp_path: Path, monkeypatch, capsys, reading_bars: list[Any]
) -> None:
    from tempa.sft import sources

    monkeypatch.setattr(sources, "_BATCH_CHARS", 25)  # the bar moves at every record batch
    # Bytes, not characters: a BOM, two-byte characters, Windows line breaks, a line that is not UTF-8.
    data = b"\xef\xbb\xbf" + b"".join(('{"a": "%s"}\r\n' % ("\u00e9" * i)).encode() for i in range(30)) + b"\xff\n"
    sources.load_source(_jsonl_source(tmp_path, data), cache_dir=tmp_path / "cache")
    [bar] = reading_bars
    assert bar.n == bar.total == len(data)
    assert "Reading rows.jsonl" in capsys.readouterr().err


def test_a_blank_line_is_one_rule_in_bytes_and_in_text(tmp_path: Path) -> None:
    """A line is blank when ``str.strip()`` leaves nothing of it: the run skips it (no row, no reject). The plan
    counts a file's lines in bytes, where ``bytes.strip()`` kept U+00A0, U+3000, NEL, U+2028, \\x1c...: it counted
    those lines as rows. The byte rule says of every character what the text rule says; U+FEFF is no space."""
    import sys

    from tempa.chat_templates.json_files import Line, has_text, is_blank

    chars = [chr(code) for code in range(sys.maxunicode + 1)]
    spaces = [char for char in chars if not char.strip()]
    # (a lone surrogate's bytes are no UTF-8: never blank)
    assert [char for char in chars if is_blank(char.encode("utf-8", "surrogatepass"))] == spaces
    assert is_blank(" ".join(spaces).encode() * 2 + b"\r\n") and len(spaces) == 29
    assert is_blank(b"") and is_blank(b"\t\x0b\x0c\x1c\x1f\n") and not is_blank(b"\xa0") and not is_blank(b"\xc2")
    assert Line(1, "\u00a0\u3000\x85\u2028").blank and not Line(1, "\ufeff").blank
    assert not Line(1, " ", error="invalid UTF-8").blank
    # a file of blank lines has no text, a space of 3 bytes cut by the end of the 64 KiB read or not
    path = tmp_path / "rows.jsonl"
    for spaces in range((1 << 16) - 3, (1 << 16) + 1):
        path.write_bytes(b" " * spaces + "\u3000\n".encode())
        assert not has_text(path), spaces
        path.write_bytes(b" " * spaces + "\u3000\n{}".encode())
        assert has_text(path), spaces


def test_a_file_whose_lines_end_in_cr_alone_says_so(tmp_path: Path) -> None:
    """Lines ended by CR alone (old Mac files) are one line to tempa, whose byte offsets and line numbers count LF
    (``datasets`` reads them as rows): the reason said only "Extra data"; it now says what to do."""
    from tempa.chat_templates.json_files import JsonFileError, read_json, read_jsonl

    rows = b'{"a": 1}\r{"a": 2}\r'
    (tmp_path / "rows.jsonl").write_bytes(rows)
    (line,) = read_jsonl(tmp_path / "rows.jsonl")
    assert line.error == ("not valid JSON (Extra data, column 10; the lines end in CR alone: save the file with LF "
                          "or CRLF line breaks)")
    (tmp_path / "rows.json").write_bytes(rows)
    with pytest.raises(JsonFileError, match=r"rows.json:1: not valid JSON \(Extra data, column 10; the lines end in "
                                            r"CR alone: save the file with LF or CRLF line breaks\)$"):
        read_json(tmp_path / "rows.json")
    (tmp_path / "rows.jsonl").write_bytes(b'{"a": 1} {"a": 2}\r\n')  # two rows on one line: no CR between them
    assert next(read_jsonl(tmp_path / "rows.jsonl")).error == "not valid JSON (Extra data, column 10)"


def test_line_spans_cut_only_at_line_starts_and_their_lines_are_the_files() -> None:
    import random

    from tempa.chat_templates.json_files import line_spans, read_lines

    rng = random.Random(0)
    for case in range(60):
        lines = [bytes(rng.choice(b"ab \xff\r") for _ in range(rng.choice([0, 1, 3, 40, 200]))) for _ in range(rng.randint(1, 30))]
        data = (b"\xef\xbb\xbf" if case % 3 == 0 else b"") + b"\n".join(lines) + (b"\n" if case % 2 else b"")
        if not data:  # an empty file is an error before any reading (check_not_empty)
            continue
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "rows.jsonl"
            path.write_bytes(data)
            whole = [(line.text, line.error) for line in read_lines(path)]
            for parts in (1, 2, 3, 7, 64):
                spans = line_spans(path, parts)
                assert 1 <= len(spans) <= parts
                assert spans[0][0] == 0 and spans[-1][1] == len(data)
                assert all(a < b for a, b in spans) and all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))
                assert all(data[start - 1:start] == b"\n" for start, _ in spans[1:])
                sizes: list[int] = []
                read = [(line.text, line.error) for span in spans for line in read_lines(path, sizes.append, span)]
                assert read == whole, (case, parts)
                assert sum(sizes) == len(data)


def test_a_jsonl_file_read_by_the_workers_gives_the_rows_load_source_gives(tmp_path: Path) -> None:
    """A one-pass source's workers read their own lines (no Arrow copy first): in any chunks, the same rows as
    the cached Arrow copy, for files with a BOM, blank lines, Windows line breaks, bytes that are not UTF-8 and
    no final line break."""
    import random

    from tempa.sft import sources
    from tempa.sft.forked_workers import chunk_bounds

    rng = random.Random(1)
    for case in range(40):
        lines = [bytes(rng.choice(b'ab {}"\xff\r') for _ in range(rng.choice([0, 1, 3, 40, 200])))
                 for _ in range(rng.randint(1, 30))]
        data = (b"\xef\xbb\xbf" if case % 3 == 0 else b"") + b"\n".join(lines) + (b"\n" if case % 2 else b"")
        if not data.strip(b"\xef\xbb\xbf"):
            continue
        (tmp_path / str(case)).mkdir()
        source = _jsonl_source(tmp_path / str(case), data)
        loaded = sources.load_source(source, cache_dir=tmp_path / str(case) / "cache").to_dict()
        lines_file = sources.json_lines_files(source)
        assert lines_file is not None and len(lines_file) == len(loaded[sources.RAW]), case
        for chunks in (1, 2, 5, 64):
            read: dict[str, list] = {sources.RAW: [], sources.READ_ERROR: []}
            for start, end in chunk_bounds(lines_file.costs(), chunks):
                for batch in lines_file.batches(start, end, 3):
                    for name, values in batch.items():
                        read[name].extend(values)
            assert read == loaded, (case, chunks)


_LINES = b'{"a": 1, "t": "x"}\n{"a": 2, "t": "y"}\n'
_JSON_FILES = {  # a .json file's content: JSON Lines (True) or one document (False)
    "lines": (_LINES, True),
    "lines, a BOM, CRLF, a blank first line, no final break": (b"\xef\xbb\xbf\r\n" + _LINES.replace(b"\n", b"\r\n")[:-2],
                                                                True),
    "lines with blank lines between": (b'\n\n{"a": 1, "t": "x"}\n\n  \n{"a": 2, "t": "y"}\n\n', True),
    "lines, the second broken": (b'{"a": 1, "t": "x"}\n{"a": 2,\n{"a": 3, "t": "z"}\n', True),
    "lines, the first broken": (b'{not json\n{"a": 1, "t": "x"}\n{"a": 2, "t": "y"}\n', True),
    "lines, the first not UTF-8": (b'{"a": "caf\xe9"}\n{"a": 1, "t": "x"}\n{"a": 2, "t": "y"}\n', True),
    "lines, the second broken in a string": (b'{"a": 1, "t": "x"}\n{"a": "unterminated\n{"a": 2, "t": "y"}\n', True),
    "lines, the first null": (b'null\n{"a": 1, "t": "x"}\n{"a": 2, "t": "y"}\n', True),
    # blank is what str.strip() removes, as the run skips a blank line: these were taken for documents (and failed)
    "lines, a first line of no-break and ideographic spaces": ("\u00a0\u3000\n".encode() + _LINES, True),
    "one line, then a line of a vertical tab": (b'{"a": 1, "t": "x"}\n\x0b\n', True),
    "one line, then a line of no-break spaces": ('{"a": 1, "t": "x"}\n\u00a0\n'.encode(), True),
    "a list": (b'[{"a": 1, "t": "x"}, {"a": 2, "t": "y"}]', False),
    "a list, pretty-printed": (b'[\n  {"a": 1, "t": "x"},\n  {"a": 2, "t": "y"}\n]\n', False),
    "an object holding a list, pretty-printed": (b'{\n  "data": [\n    {"a": 1, "t": "x"}\n  ]\n}\n', False),
    "an object holding a list, on one line": (b'{"data": [{"a": 1, "t": "x"}, {"a": 2, "t": "y"}]}\n\n', False),
    "an object starting on one line": (b'{"data": [{"a": 1, "t": "x"},\n {"a": 2, "t": "y"}]}\n', False),
    "an object holding a list and other fields": (b'{"version": 2, "tags": ["a"], "data": [{"a": 1, "t": "x"}]}', False),
    "one conversation on one line": (b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "f"}]}\n',
                                     False),
    "one row on one line": (b'{"text": "x", "tags": ["news", "sports"]}', False),
    "one row with an empty list": (b'{"instruction": "q", "input": "", "output": "a", "history": []}\n', False),
    "an object with text that is not ASCII, starting on one line": (
        '{"name": "日本語データ", "data": [\n{"instruction": "質問", "output": "答え"}\n]}\n'.encode(), False),
}


@pytest.mark.parametrize("name", list(_JSON_FILES))
def test_a_json_file_is_read_as_its_content_says(tmp_path: Path, name: str) -> None:
    """A ``.json`` file holding JSON Lines, as many hub datasets ship them, stopped the run with "rows.json:2: not
    valid JSON (Extra data)". It is now read as JSON Lines (a broken line a reject, as in a ``.jsonl`` file), with
    the rows ``datasets``' own JSON loader gives; a JSON document gives its list of rows."""
    import json

    import datasets

    from tempa.chat_templates.json_files import Line, is_json_lines, parse_line
    from tempa.sft import sources

    content, lines = _JSON_FILES[name]
    path = tmp_path / "rows.json"
    path.write_bytes(content)
    assert is_json_lines(path) is lines
    source = SourceConfig.model_validate({"name": "s", "path": str(path)})
    loaded = sources.load_source(source, cache_dir=tmp_path / "cache").to_dict()
    errors = loaded.get(sources.READ_ERROR, [None] * len(loaded[sources.RAW]))
    parsed = [parse_line(Line(i + 1, text, error)) for i, (text, error) in
              enumerate(zip(loaded[sources.RAW], errors, strict=True))]
    usable = [line for line in parsed if not line.blank and line.error is None and line.value is not None]
    rows = [line.value for line in usable]
    if lines:
        assert sources.row_names(source).lines  # rejects name the line
        unusable = [line.number for line in parsed if not line.blank and line not in usable]
        assert unusable == ([2] if "second broken" in name else [1] if "the first" in name else []), unusable
        if "in a string" in name:  # the reason reads as a sentence (it said "starting at, column 7")
            assert parsed[1].error == "not valid JSON (Unterminated string starting at column 7)", parsed[1]
        good = tmp_path / "good.json"  # the usable lines alone, for datasets' loader, which fails on a bad one
        good.write_text("\n".join(line.text for line in usable), encoding="utf-8")
        expected = datasets.load_dataset("json", data_files=str(good), split="train",
                                         cache_dir=str(tmp_path / "hf")).to_list()
    else:  # the list, the object's one list of rows, or the object as one row
        document = json.loads(content.decode("utf-8"))
        expected = document if isinstance(document, list) else document.get("data", [document])
    assert rows == expected and len(rows) >= 1


def test_a_file_in_the_hugging_face_cache_is_read_by_its_link_name(tmp_path: Path, tiny_tokenizer) -> None:
    """A dataset file in the HF cache is a link (snapshots/<rev>/train.jsonl) to a blob named by its hash, without a
    suffix. The recipe's path was resolved through the link, so the run said "unsupported file type ''" and the
    plan did not count it."""
    import json

    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig
    from tempa.sft.data_size import scan_local_rows

    tiny_tokenizer.chat_template = load_template("llama3_thinking")
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "9f86d081884c7d65").write_text("".join(
        json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(5)), encoding="utf-8")
    snapshot = tmp_path / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / "train.jsonl").symlink_to(tmp_path / "blobs" / "9f86d081884c7d65")
    source = SourceConfig.model_validate({"name": "s", "path": "snapshots/rev/train.jsonl"},
                                         context={"base_dir": str(tmp_path)})
    assert source.path == str(snapshot / "train.jsonl")
    config = DataConfig.model_validate({"sources": [source.model_dump()], "heldout": 0})
    prepared = prepare_sft_data(config, tiny_tokenizer, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", seed=0)
    assert prepared.mix.total.rows_kept == scan_local_rows(source.path).rows == 5
    # A data folder reached through links (the folder itself, and a folder above it): datasets names its files by
    # their real path, and naming the rows below the linked folder stopped the run with a ValueError traceback.
    (tmp_path / "real" / "sets").mkdir(parents=True)
    (tmp_path / "real" / "sets" / "train-0.jsonl").write_text('{"prompt": "q", "response": "a"}\n{oops\n',
                                                              encoding="utf-8")
    (tmp_path / "above").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "link").symlink_to(tmp_path / "real" / "sets")
    for path in ("above/sets", "real/link", "above/link"):
        source = SourceConfig.model_validate({"name": "s", "path": path}, context={"base_dir": str(tmp_path)})
        config = DataConfig.model_validate({"sources": [source.model_dump()], "heldout": 0})
        out = tmp_path / f"out-{path.replace('/', '-')}"
        prepared = prepare_sft_data(config, tiny_tokenizer, out_dir=out, cache_dir=tmp_path / "cache", seed=0)
        reject = json.loads((out / "rejects.jsonl").read_text(encoding="utf-8"))
        assert prepared.mix.total.rows_kept == 1 and (reject["file"], reject["line"]) == ("train-0.jsonl", 2), path
    # A `..` after a linked folder goes where the OS goes (the folder's real parent), not back up the link.
    (tmp_path / "real" / "data").mkdir()
    (tmp_path / "real" / "data" / "x.jsonl").write_text('{"prompt": "q", "response": "a"}\n', encoding="utf-8")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "sets").symlink_to(tmp_path / "real" / "sets")
    source = SourceConfig.model_validate({"name": "s", "path": "sets/../data/x.jsonl"},
                                         context={"base_dir": str(tmp_path / "proj")})
    assert source.path == str(tmp_path / "real" / "data" / "x.jsonl")
    # A link whose target is gone is a local path that does not exist, not a hub dataset id to fetch.
    (tmp_path / "proj" / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValidationError, match=r"local path is a link to a path that does not exist: .*gone -> "):
        SourceConfig.model_validate({"name": "s", "path": "gone"}, context={"base_dir": str(tmp_path / "proj")})


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_folder_of_jsonl_files_is_read_as_one_file_is_a_bad_line_a_reject(tmp_path: Path, tiny_tokenizer,
                                                                           suffix: str) -> None:
    """A folder of JSON Lines shards (``.jsonl``, or ``.json`` holding JSON Lines) went to ``datasets``' JSON loader:
    a line that is not JSON, or a blank line among conversations of different shapes, stopped the run with "An
    error occurred while generating the dataset", naming no file or line. Now tempa's reader reads the split's files
    in order (a test split's file left out, a shard of nothing but whitespace skipped in either path): the broken
    line is a reject named by file and line, and one pass and normalising first prepare the same rows."""
    import json

    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tiny_tokenizer
    tok.chat_template = load_template("llama3_thinking")
    folder = tmp_path / "shards"
    folder.mkdir()

    def row(i: int) -> str:
        answer = {"role": "assistant", "content": f"a{i}", **({"reasoning_content": f"r{i}"} if i % 2 else {})}
        return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, answer]})

    (folder / f"train-00000-of-00002{suffix}").write_text("\n".join([row(0), "", row(1), "{not json"]) + "\n",
                                                          encoding="utf-8")
    (folder / f"train-00001-of-00002{suffix}").write_text("\n".join(row(i) for i in range(2, 6)), encoding="utf-8")
    (folder / f"train-00002-of-00002{suffix}").write_bytes(b"\xef\xbb\xbf \n\n")  # a shard left empty: no rows
    (folder / f"test-00000-of-00001{suffix}").write_text(row(99) + "\n", encoding="utf-8")
    prepared = {}
    for curate in ({}, {"dedup": {}}):  # one pass, and normalising first (the Arrow copy)
        config = DataConfig.model_validate({"sources": [{"name": "s", "path": str(folder)}], "curation": curate,
                                            "num_proc": 2, "heldout": 0})
        out = tmp_path / f"out-{len(prepared)}"
        prepared[len(prepared)] = prepare_sft_data(config, tok, out_dir=out, cache_dir=tmp_path / "cache", seed=0)
        (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
        assert reject["reason"] == "malformed_row" and reject["row"] == 3 and reject["data"] == "{not json", reject
        # named by its file and line, as an editor shows them
        assert (reject["file"], reject["line"]) == (f"train-00000-of-00002{suffix}", 4), reject
        assert reject["detail"].startswith(f"train-00000-of-00002{suffix} line 4: not valid JSON"), reject
    one, first = prepared[0], prepared[1]
    assert one.mix.total.rows_in == 7 and one.mix.total.rows_kept == 6
    assert sorted(tok.decode(ids) for ids in one.train["input_ids"]) == sorted(
        tok.decode(ids) for ids in first.train["input_ids"])
    assert not any("q99" in tok.decode(ids) for ids in one.train["input_ids"])


def test_a_folder_of_json_documents_is_read_as_each_file_alone_is(tmp_path: Path, tiny_tokenizer,
                                                                 monkeypatch) -> None:
    """A folder of JSON lists (a ShareGPT dump in parts) went to ``datasets``' JSON loader, which types every row
    together: an ``id`` that is a number in one row and a string in another stopped the run with "An error
    occurred while generating the dataset", though each file alone prepares. Now each file is read as it would be
    alone (a list, an object holding one, JSON Lines), rejects are named by file and row or line, and the plan
    counts the rows the run reads."""
    import json

    from tempa.chat_templates import load_template
    from tempa.chat_templates.json_files import read_json
    from tempa.sft import sources
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig
    from tempa.sft.data_size import scan_local_rows

    tok = tiny_tokenizer
    tok.chat_template = load_template("llama3_thinking")
    folder = tmp_path / "parts"
    folder.mkdir()

    def row(i: Any) -> dict:
        return {"id": i, "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}

    (folder / "part-1.json").write_text(json.dumps([row(1), row("two"), {"conversations": "broken"}], indent=1),
                                        encoding="utf-8")
    (folder / "part-2.json").write_text(json.dumps({"data": [row(3.5), row(None)]}), encoding="utf-8")
    (folder / "part-3.json").write_text(f"{json.dumps(row(6))}\n{{oops\n{json.dumps(row([7]))}\n", encoding="utf-8")
    (folder / "part-4.json").write_text("  \n", encoding="utf-8")  # a part left empty
    config = DataConfig.model_validate({"sources": [{"name": "s", "path": str(folder), "format": "sharegpt"}],
                                        "heldout": 0})
    parsed: list[str] = []
    monkeypatch.setattr(sources, "read_json", lambda path, what: parsed.append(path.name) or read_json(path, what))
    prepared = prepare_sft_data(config, tok, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", seed=0)
    assert sorted(parsed) == ["part-1.json", "part-2.json"]  # each document parsed once, not again to name its rows
    assert sorted(tok.decode(ids).split("q")[-1].split("<")[0] for ids in prepared.train["input_ids"]) == [
        "1", "3.5", "6", "None", "[7]", "two"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r.get("file_row"), r.get("line")) for r in rejects] == [
        ("part-1.json", 2, None), ("part-3.json", None, 2)], rejects
    assert rejects[0]["detail"].startswith("part-1.json row 2: ") and rejects[1]["detail"].startswith(
        "part-3.json line 2: not valid JSON"), rejects
    assert scan_local_rows(str(folder), 16).rows == prepared.mix.total.rows_in == 8


def test_a_jsonl_source_is_prepared_without_an_arrow_copy_of_the_file(tmp_path: Path, tiny_tokenizer) -> None:
    """Read in one pass or normalised first (here: dedup), the workers read the file's lines themselves: no Arrow
    copy of it is written to the cache first (``load_source``'s), the same rows either way."""
    import json

    from tempa.chat_templates import load_template
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tiny_tokenizer
    tok.chat_template = load_template("llama3_thinking")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(40)), encoding="utf-8")
    for curate, copies in ({}, 0), ({"dedup": {}}, 0):
        cache = tmp_path / f"cache-{copies}"
        config = DataConfig.model_validate({"sources": [{"name": "s", "path": str(path)}], "curation": curate,
                                            "num_proc": 2, "heldout": 0})
        prepared = prepare_sft_data(config, tok, out_dir=tmp_path / f"out-{copies}", cache_dir=cache, seed=0)
        assert len(prepared.train) == 40 and len(list(cache.glob("hf/jsonl-*"))) == copies


def test_a_large_jsonl_file_is_read_in_parallel_parts_exactly_as_in_one(
    tmp_path: Path, monkeypatch, reading_bars: list[Any]
) -> None:
    from tempa.sft import sources

    monkeypatch.setattr(sources, "_BATCH_CHARS", 200)
    lines = [b'\xef\xbb\xbf{"a": 0}', b"", *[b'{"a": %d, "pad": "%s"}\r' % (i, b"\xc3\xa9" * i) for i in range(1, 300)],
             b'{"a": "\xff"}', b"   ", b'{"last": "no line break"}']
    source = _jsonl_source(tmp_path, b"\n".join(lines))
    monkeypatch.setattr(sources, "read_processes", lambda size: 1)
    one = sources.load_source(source, cache_dir=tmp_path / "one")
    monkeypatch.setattr(sources, "read_processes", lambda size: 4)
    four = sources.load_source(source, cache_dir=tmp_path / "four")
    assert len(list((tmp_path / "four" / "hf").glob("jsonl-*/part-*.arrow"))) == 4  # read in 4 parts
    assert one.to_dict() == four.to_dict() and len(one) == len(lines)
    assert one[sources.RAW][0] == '{"a": 0}' and one[sources.READ_ERROR][-3] == "invalid UTF-8 (byte 0xff at column 8)"
    assert [bar.n for bar in reading_bars] == [bar.total for bar in reading_bars] == [Path(source.path).stat().st_size] * 2
    assert sources.load_source(source, cache_dir=tmp_path / "four").to_dict() == one.to_dict()  # from the cache


def test_a_jsonl_read_cut_short_is_never_reused_and_a_changed_file_is_read_again(tmp_path: Path, monkeypatch) -> None:
    from tempa.chat_templates import json_files
    from tempa.sft import sources

    source = _jsonl_source(tmp_path, b"".join(b'{"a": %d}\n' % i for i in range(50)))
    cache = tmp_path / "cache"
    real = json_files.read_lines

    def cut_short(path: Path, **kwargs):
        for line in real(path, **kwargs):
            if line.number == 30:
                raise KeyboardInterrupt
            yield line

    monkeypatch.setattr(sources, "read_lines", cut_short)
    monkeypatch.setattr(sources, "_BATCH_CHARS", 1)  # batches of the first 29 lines are on disk when it stops
    with pytest.raises(KeyboardInterrupt):
        sources.load_source(source, cache_dir=cache)
    assert list((cache / "hf").iterdir()) == []  # nothing that a later load could take for the whole file
    monkeypatch.setattr(sources, "read_lines", real)
    assert len(sources.load_source(source, cache_dir=cache)) == 50
    assert len(sources.load_source(source, cache_dir=cache)) == 50  # the cached file, complete

    Path(source.path).write_bytes(b"".join(b'{"b": %d}\n' % i for i in range(7)))
    again = sources.load_source(source, cache_dir=cache)
    assert again[sources.RAW] == [f'{{"b": {i}}}' for i in range(7)]


def test_a_sharegpt_rows_message_names_sharegpts_turn_keys(tmp_path: Path) -> None:
    """ShareGPT turns are {from, value}: the message said {role, content}, which its rows never have."""
    sharegpt = _src(tmp_path).model_copy(update={"format": "sharegpt"})
    with pytest.raises(RowError) as info:
        normalize_row({"conversations": [{"speaker": "human", "text": "hi"}]}, spec_for(sharegpt))
    assert str(info.value) == "expected 'conversations' to be a list of {from, value}; turn 0 has keys ['speaker', 'text']"


@pytest.mark.parametrize(("files", "left_out"), [
    ({"a.txt": "satu\n", "c.jsonl": '{"text": "dua"}\n'}, "a.txt"),  # the majority kind read, the other dropped
    ({"a.txt": "satu\n", "b.TXT": "dua\n"}, "b.TXT"),  # not a text file to datasets
    ({"part-0.jsonl": '{"text": "satu"}\n', "part-1.jsonl": '{"text": "dua"}\n', "sub/extra.csv": "text\ntiga\n"},
     "sub/extra.csv"),
])
def test_a_folder_whose_files_would_not_all_be_read_is_refused_naming_them(tmp_path: Path, files, left_out) -> None:
    """datasets reads a folder as one kind of data file and dropped the others without a word (CPT new-user trial:
    a.txt, b.TXT and c.jsonl gave c.jsonl's 2 tokens); the README and the run's first check say nothing of it."""
    from tempa.sft.data_config import DataError, SourceConfig
    from tempa.sft.sources import check_source, load_source

    folder = tmp_path / "mix"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "README.md").write_text("# notes\n")  # not data: never counted
    source = SourceConfig.model_validate({"name": "mix", "path": str(folder)})
    for read in (check_source, load_source):
        with pytest.raises(DataError) as info:
            read(source)
        message = str(info.value)
        assert f"{left_out} would not be read: a folder is read as one kind of data file" in message, message
        assert "\n" not in message
