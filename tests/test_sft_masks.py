"""The data pipeline's one-pass masks against the template's own, and its worker processes against one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tempa.chat_templates import load_template
from tempa.chat_templates.rendering import token_mask
from tempa.chat_templates.thinking import mode_kwargs
from tempa.sft.expand import turn_views
from tempa.sft.tokenization import ChatEncoder

GOLDEN = json.loads((Path(__file__).parent / "golden" / "conversations.json").read_text(encoding="utf-8"))
WEATHER = GOLDEN["tool_call"]["tools"]


def _turn(role: str, content: str, reasoning: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": content, **extra}
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    return out


# Edges for the offsets: multi-byte and combining characters, emoji split over byte tokens, whitespace at
# both ends of a span, empty answers, text that looks like markup, and a system turn.
CORPUS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    *[(case["messages"], case.get("tools")) for case in GOLDEN.values()],
    ([_turn("user", "สวัสดีครับ 你好 👋🏽"), _turn("assistant", " ตอบ: 好的 👍 ", "คิด… e\u0301 ")], None),
    ([_turn("system", "Jawab singkat."), _turn("user", "  spasi  "), _turn("assistant", "\n\nok\n", "\n")], None),
    ([_turn("user", "a"), _turn("assistant", ""), _turn("user", "b"), _turn("assistant", "<b>x</b> {{ y }}", "r")],
     None),
    ([_turn("user", "Cuaca Medan?"),
      _turn("assistant", "", "Panggil alat.", tool_calls=[{"type": "function", "function": {
          "name": "get_weather", "arguments": {"city": "Medan"}}}]),
      _turn("tool", "29°C", name="get_weather"), _turn("assistant", "29°C, cerah ☀️", "Alat menjawab.")], WEATHER),
]


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer_dir: Path, llama3_model_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    return {"tiny": AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
            "llama3": AutoTokenizer.from_pretrained(llama3_model_dir)}


@pytest.mark.parametrize("template", ["llama3_thinking", "chatml_thinking"])
@pytest.mark.parametrize("which", ["tiny", "llama3"])
def test_masks_are_byte_identical_to_apply_chat_template(tokenizers: dict[str, Any], which: str, template: str) -> None:
    """Every rendering the pipeline makes (each turn view of each conversation, thinking on and off) gives
    the ids and mask of ``apply_chat_template(..., return_assistant_tokens_mask=True)``, one at a time and
    tokenised as a batch."""
    tok = tokenizers[which]
    tok.chat_template = load_template(template)
    encoder = ChatEncoder(tok)
    rendered, expected, refused = [], [], 0
    for messages, tools in CORPUS:
        for thinking in (True, False):
            for view in turn_views(messages, thinking):
                try:
                    reference = tok.apply_chat_template(
                        view.messages, tools=tools, tokenize=True, return_dict=True,
                        return_assistant_tokens_mask=True, **mode_kwargs("on" if view.thinking else "off"))
                except Exception as exc:  # the template refuses the row: so must the encoder
                    with pytest.raises(type(exc)):
                        encoder.text(view.messages, view.thinking, tools)
                    refused += 1
                    continue
                want = (list(reference["input_ids"]), list(reference["assistant_masks"]))
                assert encoder(view.messages, view.thinking, tools) == want, (which, template, view)
                assert 1 in want[1]
                rendered.append(encoder.text(view.messages, view.thinking, tools))
                expected.append(want)
    assert len(expected) > 30 and refused < len(expected)
    assert encoder.encode(rendered) == expected


def test_token_mask_walks_the_spans_as_transformers_does_when_offsets_go_back() -> None:
    # transformers never walks back to an earlier span: the second token starts inside span 0 but is
    # compared with span 1, which it does not reach.
    assert token_mask([(7, 8), (1, 3)], [(0, 2), (5, 9)]) == [1, 0]
    # In order: a token is trained when it overlaps the span it meets, however little.
    assert token_mask([(0, 2), (2, 4), (4, 6), (6, 8)], [(3, 5)]) == [0, 1, 1, 0]
    assert token_mask([(0, 1), (1, 2)], []) == [0, 0]


def test_worker_processes_prepare_exactly_what_one_process_does(tmp_path: Path, tokenizers: dict[str, Any]) -> None:
    from tempa.sft.data import prepare_sft_data
    from tempa.sft.data_config import DataConfig

    tok = tokenizers["tiny"]
    tok.chat_template = load_template("llama3_thinking")
    rows = [{"messages": messages, **({"tools": tools} if tools else {})} for messages, tools in CORPUS]
    rows += [{"messages": [_turn("user", f"soal {i}"), _turn("assistant", f"jawab {i}", f"pikir {i}")]}
             for i in range(40)]
    with open(tmp_path / "rows.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    def prepare(num_proc: int, name: str):
        config = DataConfig.model_validate(
            {"sources": [{"name": "r", "path": str(tmp_path / "rows.jsonl"), "thinking_mode": "mixed",
                          "thinking_ratio": 0.5}],
             "heldout": 0.1, "num_proc": num_proc})
        return prepare_sft_data(config, tok, out_dir=tmp_path / name, cache_dir=tmp_path / f"cache-{name}", seed=3)

    one, two = prepare(1, "one"), prepare(2, "two")
    assert not two.cache_hit and len(one.train) > 40
    assert one.train.to_dict() == two.train.to_dict() and one.eval.to_dict() == two.eval.to_dict()
    assert one.mix == two.mix
    assert (tmp_path / "one" / "rejects.jsonl").read_bytes() == (tmp_path / "two" / "rejects.jsonl").read_bytes()


def test_default_workers_follow_cores_and_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempa.sft.data_config as data

    monkeypatch.setattr(data, "available_cores", lambda: 8)
    assert data.worker_count(None, 3 * data.ROWS_PER_PROCESS) == 3
    assert data.worker_count(None, 10**7) == 8
    assert data.worker_count(None, data.ROWS_PER_PROCESS + 1) is None  # one process: no pool at all
    assert data.worker_count(4, 10) == 4
