"""``tempa template render|check|bake`` through ``main(argv)``, plus the token view it prints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tempa.chat_templates import bake_tokenizer
from tempa.chat_templates.cli import main, register
from tempa.chat_templates.token_view import format_token_view, token_pieces

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "conversations.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def baked(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake_tokenizer(tiny_tokenizer_dir, "llama3_thinking", tmp_path_factory.mktemp("cli") / "baked")


@pytest.fixture()
def case_file(tmp_path: Path):
    def write(name: str, *, with_tools_object: bool = False) -> Path:
        spec = CASES[name]
        data: Any = (
            {"messages": spec["messages"], "tools": spec.get("tools")}
            if with_tools_object
            else spec["messages"]
        )
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return path

    return write


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


# ---------------------------------------------------------------- render


@pytest.mark.parametrize("mode", ["on", "off"])
def test_render_prints_the_card_prompt(mode: str, case_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = case_file("id_sentiment_prompt")
    argv = [
        "template",
        "render",
        "--template",
        "llama3_thinking",
        "--messages",
        str(path),
        "--thinking",
        mode,
    ]
    assert main([*argv, "--generation-prompt"]) == 0
    expected = (GOLDEN / f"id_sentiment_prompt.llama3_thinking.{mode}.txt").read_text(encoding="utf-8")
    assert capsys.readouterr().out == expected + "\n"


def test_render_reads_tools_from_a_messages_object(case_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = case_file("tool_call", with_tools_object=True)
    assert (
        main(
            [
                "template",
                "render",
                "--template",
                "chatml_thinking",
                "--messages",
                str(path),
                "--thinking",
                "off",
            ]
        )
        == 0
    )
    expected = (
        (GOLDEN / "tool_call.chatml_thinking.off.txt")
        .read_text(encoding="utf-8")
        .replace("⟦", "")
        .replace("⟧", "")
    )
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    ("mode", "trained"),
    [
        (
            "on",
            'Kalimat itu menyebut bukunya "sangat membosankan", sebuah penilaian buruk. Jadi sentimennya negatif.'
            "\n</think>\n\nNegatif<|eot_id|>",
        ),
        ("off", "Negatif<|eot_id|>"),
    ],
    ids=["on", "off"],
)
def test_render_tokens_marks_exactly_the_trained_tokens(
    mode: str, trained: str, baked: Path, case_file, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case_file("id_sentiment")
    assert (
        main(
            [
                "template",
                "render",
                "--tokenizer",
                str(baked),
                "--messages",
                str(path),
                "--thinking",
                mode,
                "--tokens",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    view, summary = out.rstrip("\n").rsplit("\n", 1)
    assert view.count("[[") == 1 and view.count("]]") == 1  # not a tty: plain brackets, one trained run
    inside = view[view.index("[[") + 2 : view.index("]]")]
    assert inside.replace("·", "").replace("↵", "") == trained
    before = view[: view.index("[[")].replace("·", "").replace("↵", "")
    assert before.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        + ("<think>\n" if mode == "on" else "<think>\n</think>\n")
    )
    assert "·" in inside or len(inside) < 3  # token boundaries are visible
    assert summary.startswith("-- trained (between [[ ]]): ") and f"thinking_mode={mode}" in summary


def test_render_tokens_needs_a_tokenizer(case_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = case_file("id_sentiment")
    assert (
        main(["template", "render", "--template", "llama3_thinking", "--messages", str(path), "--tokens"])
        == 1
    )
    assert "--tokens needs --tokenizer" in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '[{"role": "bot", "content": "hi"}]',
            'rejects this conversation: messages[0].role: unknown role "bot"',
        ),
        ('[{"role": "user",', ":1: not valid JSON"),
        (
            '{"rows": []}',
            'expected a non-empty JSON list of message objects, or an object with a "messages" list',
        ),
    ],
)
def test_render_errors_are_one_line_naming_the_file(
    content: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    assert main(["template", "render", "--template", "llama3_thinking", "--messages", str(path)]) == 1
    line = _one_line_error(capsys)
    assert str(path) in line and expected in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty file"), (b"\xef\xbb\xbf\n", "empty file"), (b'[{"role": "user", "content": "caf\xe9"}]', ":1: invalid UTF-8")],
)
def test_render_input_that_is_empty_or_not_utf8_is_one_line(
    content: bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert main(["template", "render", "--template", "llama3_thinking", "--messages", str(path)]) == 1
    line = _one_line_error(capsys)
    assert str(path) in line and expected in line


def test_render_input_may_start_with_a_bom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf[{"role": "user", "content": "Halo"}]')
    assert main(["template", "render", "--template", "llama3_thinking", "--messages", str(path)]) == 0
    assert "Halo" in capsys.readouterr().out


def test_render_unknown_template_names_the_known_ones(case_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = case_file("id_sentiment")
    assert main(["template", "render", "--template", "llama4", "--messages", str(path)]) == 1
    assert "'llama4'" in (line := _one_line_error(capsys)) and "chatml_thinking, llama3_thinking" in line


# ---------------------------------------------------------------- check


def test_check_passes_on_the_baked_tokenizer(baked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "check", "--tokenizer", str(baked)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line[:2] in {"a.", "b.", "c.", "d.", "e.", "f.", "g.", "h.", "i.", "j."}]
    assert len(rows) == 10 and all("  PASS  " in row for row in rows)
    assert lines[-1].startswith("-- 10/10 passed")


def test_check_fails_on_the_unbaked_tokenizer(
    tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The base generation_config.json stops on <|end_of_text|> only: a real failure, and a non-zero exit.
    assert (
        main(["template", "check", "--tokenizer", str(tiny_tokenizer_dir), "--template", "chatml_thinking"])
        == 1
    )
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("c.")]
    assert "FAIL" in row and "<|im_end|>" in row
    assert "-- 9/10 passed" in out


def test_check_without_a_template_or_folder_is_a_one_line_error(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["template", "check", "--tokenizer", str(tiny_tokenizer_dir)]) == 1
    assert "--template is required" in _one_line_error(capsys)
    assert main(["template", "check", "--tokenizer", str(tmp_path / "missing")]) == 1
    assert "no such folder" in _one_line_error(capsys)


# ---------------------------------------------------------------- bake


def test_bake_then_check(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baked"
    argv = [
        "template",
        "bake",
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--template",
        "chatml_thinking",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "all template checks passed" in capsys.readouterr().out
    assert main(["template", "check", "--tokenizer", str(out)]) == 0
    capsys.readouterr()
    assert main(argv) == 1  # never overwrites silently
    assert "not empty" in _one_line_error(capsys)


def test_bake_with_a_thinking_default_and_the_stock_preamble(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "baked"
    assert main(["template", "bake", "--tokenizer", str(tiny_tokenizer_dir), "--template", "llama3_thinking",
                 "--out", str(out), "--thinking-default", "off", "--stock-preamble"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert prompt.endswith("<think>\n</think>\n")
    assert main(["template", "check", "--tokenizer", str(out)]) == 0


@pytest.mark.parametrize(("model", "expected"), [("missing", "no such folder"), ("file", "a file, not a folder"),
                                               ("empty", "not a model folder: no config.json")])
def test_bake_refuses_a_model_that_is_not_a_model_folder(
    model: str, expected: str, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --model was ignored: the bake then skipped the check that the model's embeddings hold a row for an
    added pad token, and wrote a tokenizer the model cannot embed."""
    folder = tmp_path / model
    if model == "file":
        folder.write_text("{}")
    elif model == "empty":
        folder.mkdir()
    out = tmp_path / "baked"
    assert main(["template", "bake", "--tokenizer", str(tiny_tokenizer_dir), "--template", "llama3_thinking",
                 "--out", str(out), "--model", str(folder)]) == 1
    line = _one_line_error(capsys)
    assert f"{folder}: {expected} (--model expects a model folder with config.json)" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ([model] if model != "missing" else [])


# ---------------------------------------------------------------- wiring


def test_register_adds_the_template_command() -> None:
    parser = argparse.ArgumentParser(prog="tempa")
    register(parser.add_subparsers())
    args = parser.parse_args(["template", "check", "--tokenizer", "somewhere"])
    assert callable(args.func) and args.tokenizer == Path("somewhere")


def test_template_errors_exit_1_as_every_tempa_command_does_and_a_bare_template_is_a_usage_error(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tempa template` exited 2 (argparse's usage code) for runtime errors, a non-empty --out, a bad --pad-token or
    a missing file, where every other tempa command exits 1; and a bare `tempa template` printed only the usage, where
    `tempa export` says what is missing."""
    from tempa.recipes.cli import main as tempa

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    bake = ["template", "bake", "--tokenizer", str(tiny_tokenizer_dir), "--template", "llama3_thinking"]
    assert tempa([*bake, "--out", str(out)]) == 1
    assert "not empty" in _one_line_error(capsys)
    assert tempa([*bake, "--out", str(tmp_path / "baked"), "--pad-token", "<|eot_id|>"]) == 1
    assert "padding must differ" in _one_line_error(capsys)
    assert tempa(["template", "render", "--template", "llama3_thinking", "--messages", str(tmp_path / "no.json")]) == 1
    assert "no such file" in _one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "mine\n" and not (tmp_path / "baked").exists()

    for argv, command in ((["template"], "tempa template"), (["export"], "tempa export")):
        with pytest.raises(SystemExit) as exit_info:
            tempa(argv)
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"{command}: error: the following arguments are required: "), last
    with pytest.raises(SystemExit) as exit_info:
        main([])  # standalone
    assert exit_info.value.code == 2 and "error: the following arguments are required" in capsys.readouterr().err


def test_module_runs_standalone(case_file) -> None:
    path = case_file("inline_think")
    argv = [
        sys.executable,
        "-m",
        "tempa.chat_templates.cli",
        "template",
        "render",
        "--template",
        "chatml_thinking",
        "--messages",
        str(path),
        "--thinking",
        "off",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("<think>\n</think>\nNo, 91 = 7 × 13.<|im_end|>\n\n")


# ---------------------------------------------------------------- token view


def test_token_pieces_rejoin_to_the_text_even_across_split_characters(tiny_tokenizer: Any) -> None:
    text = "กรุงเทพฯ 🙂 ok"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    pieces = token_pieces(tiny_tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert "" in pieces  # the emoji's bytes span several byte-level tokens


def test_format_token_view_plain_and_colour() -> None:
    pieces, mask = ["<h>", "\n", "A", "B", "<e>", "\n"], [0, 0, 1, 1, 1, 0]
    assert format_token_view(pieces, mask, color=False) == "<h>·↵\n[[A·B·<e>]]↵\n"
    coloured = format_token_view(pieces, mask, color=True)
    assert "[[" not in coloured and "\x1b[30;42mA" in coloured and coloured.count("\x1b[0m") == 1


def test_render_tokens_shows_the_samples_sft_trains_not_one_rendering(baked: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`--tokens` marked the whole conversation's assistant mask: a history turn showed as trained with its reasoning
    stripped, which tempa's SFT never trains (Swallow trial). It shows the samples SFT makes: the history turn in one
    of its own, with its reasoning; the last turn in the conversation, history reasoning dropped."""
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([
        {"role": "user", "content": "Halo"},
        {"role": "assistant", "content": "Hai juga", "reasoning_content": "sapa balik"},
        {"role": "user", "content": "Berapa 2+2?"},
        {"role": "assistant", "content": "Empat", "reasoning_content": "dua tambah dua"},
    ]), encoding="utf-8")
    assert main(["template", "render", "--tokenizer", str(baked), "--messages", str(path), "--thinking", "on",
                 "--tokens"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    headers = [i for i, line in enumerate(lines) if line.startswith("-- sample ")]
    assert [lines[i] for i in headers] == ["-- sample 1 of 2: trains turn 1 (thinking on)",
                                           "-- sample 2 of 2: trains turn 3 (thinking on)"]

    def text(view: str) -> tuple[str, str]:  # (the whole sample, its trained tokens), as text
        plain = view.replace("·", "").replace("↵", "\n")
        return plain.replace("[[", "").replace("]]", ""), "".join(part.split("]]")[0] for part in plain.split("[[")[1:])

    first, first_trained = text("\n".join(lines[headers[0] + 1:headers[1]]))
    second, second_trained = text("\n".join(lines[headers[1] + 1:-1]))
    assert "sapa balik" in first_trained and "Hai juga" in first_trained and "Berapa" not in first
    assert "dua tambah dua" in second_trained and "Empat" in second_trained
    assert "Hai juga" in second and "Hai juga" not in second_trained and "sapa balik" not in second
    assert lines[-1].startswith("-- trained (between [[ ]]): ") and " tokens in 2 samples, as tempa's SFT trains" \
        in lines[-1] and lines[-1].endswith("thinking_mode=on")


def test_tempa_render_tokens_reads_the_conversation_as_sft_reads_a_row(baked: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`tempa template render --tokens` showed the messages as the file gave them: a think block inside the answer
    stayed content, shown trained as text, where SFT reads it as the turn's reasoning (a review's finding)."""
    from tempa.recipes.cli import main as tempa

    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"role": "user", "content": "Berapa 2+2?"},
                                {"role": "assistant", "content": "<think>dua tambah dua</think>4"}]), encoding="utf-8")
    argv = ["template", "render", "--tokenizer", str(baked), "--messages", str(path), "--thinking", "on", "--tokens"]
    assert tempa(argv) == 0
    out = capsys.readouterr().out
    view = out.split("\n", 1)[1].rsplit("\n-- trained", 1)[0].replace("·", "").replace("↵", "\n")
    trained = view[view.index("[[") + 2:view.index("]]")]
    assert trained.startswith("dua tambah dua") and "<think>" not in trained  # the reasoning, after the prefill
    assert trained.endswith("4<|eot_id|>")
    path.write_text(json.dumps([{"role": "user", "content": "Halo"}]), encoding="utf-8")
    assert tempa(argv) == 1
    assert "no assistant turn, so nothing trains" in capsys.readouterr().err



def test_a_loop_where_only_some_steps_carry_a_trace_trains_as_one_sample_per_mode(tokenizer: Any) -> None:
    """chat_templates/README.md said the whole loop is one sample (a tools trial found two): with thinking on, the
    steps with a trace train in one rendering (on), those without in another (off), as the README now says."""
    from tempa.chat_templates import load_template
    from tempa.chat_templates.cli import training_samples

    def call(city: str) -> list[dict[str, Any]]:
        return [{"id": city, "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]

    loop = [{"role": "user", "content": "Oslo, Bergen?"},
            {"role": "assistant", "content": None, "reasoning_content": "Oslo first.", "tool_calls": call("Oslo")},
            {"role": "tool", "tool_call_id": "Oslo", "content": "-2C"},
            {"role": "assistant", "content": None, "tool_calls": call("Bergen")},
            {"role": "tool", "tool_call_id": "Bergen", "content": "3C"},
            {"role": "assistant", "content": "Oslo -2 C, Bergen 3 C.", "reasoning_content": "Both known."}]
    samples = training_samples(tokenizer, load_template("llama3_thinking"), loop, None, thinking=True)
    assert [(sample.turns, sample.thinking) for sample in samples] == [([3], False), ([1, 5], True)]
    on = tokenizer.decode(samples[1].input_ids)
    assert "<think>\nOslo first.\n</think>" in on and "<think>\n</think>\n\n{\"name\": \"get_weather\", " \
        "\"parameters\": {\"city\": \"Bergen\"}}" in on  # the step without a trace, untrained, as it renders
    assert "Oslo first." not in tokenizer.decode(samples[0].input_ids)
    assert [(sample.turns, sample.thinking) for sample in training_samples(
        tokenizer, load_template("llama3_thinking"), loop, None, thinking=False)] == [([1, 3, 5], False)]
