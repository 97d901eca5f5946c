"""The `tempa` command line: exit codes, one-line errors, plan/status output, tiny-model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tempa.recipes.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("tempa ")
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for command in ("run", "plan", "status", "tiny-model", "template"):
        assert command in help_text
    assert "examples:" in help_text and "tempa run recipes/demo.yaml" in help_text
    # `tempa plan --help` names every GPU --hardware takes (kept by hand: the estimator is slow to import)
    from tempa.recipes.estimate import GPUS

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    plan_help = " ".join(capsys.readouterr().out.split())
    assert all(spec.name in plan_help for spec in GPUS.values()), plan_help
    # the commands that read a run say which folder that is (a bare `run_dir` left a new user guessing)
    for command in ("status", "report", "push"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "the folder `tempa run` wrote (runs/<recipe name>" in " ".join(capsys.readouterr().out.split())


def test_bad_recipe_exits_nonzero_with_one_line_reason(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nbase_model: tempa:tiny\nstages:\n  - {name: a, kind: nope}\n")
    assert main(["plan", str(recipe)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"tempa: error: {recipe}:4: stages[0].kind")
    assert "Traceback" not in err


def test_plan_explains_stages_and_does_no_work(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "rows.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: p
        base_model: {tiny_model_dir}
        stages:
          - name: one
            kind: sft
            data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
            train: {{learning_rate: 1.0e-4}}
          - {{name: two, kind: sft, from: one, data: {{sources: [{{name: rows, path: rows.jsonl}}]}}}}
        """))
    run_dir = tmp_path / "run"
    assert main(["plan", str(recipe), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "resolved recipe" in out and "learning_rate: 0.0001" in out
    for expected in ("one", "two", "base model", "not run yet"):
        assert expected in out
    # the effective training arguments: the recipe's value, and tempa's defaults marked
    line = next(line for line in out.splitlines() if line.startswith("training arguments of one"))
    assert "learning_rate=0.0001," in line and "assistant_only_loss=true*" in line and "packing=true*" in line
    assert "learning_rate=2e-05*" in next(line for line in out.splitlines()
                                          if line.startswith("training arguments of two"))
    assert not run_dir.exists()
    # a folder holding someone's files: plan refuses it as run does, instead of planning every stage as "run"
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("x")
    assert main(["plan", str(recipe), "--run-dir", str(tmp_path / "theirs")]) == 1
    assert "not a tempa run directory" in capsys.readouterr().err


def test_status_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 1
    assert "not a tempa run directory" in capsys.readouterr().err


def test_tiny_model_command_builds_a_loadable_llama(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["tiny-model", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    for token in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token  # a single special token, never split
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>"))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # the byte-level BPE round-trips every sample language
    for text in ("Apa sentimen dari kalimat ini?", "ภาษาไทย", "தமிழ்", "日本語の文", "Tiếng Việt"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    # readable by others, as the folder is: save_pretrained wrote the weights 0600
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}["model.safetensors"] == 0o644
    # building into a folder that already holds a model is refused, nothing is overwritten
    before = (out / "model.safetensors").read_bytes()
    assert main(["tiny-model", str(out)]) == 1
    assert "already holds a model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    # a folder holding anything else: refused in one line before the build, its file kept (a raw OSError "Directory
    # not empty", after the whole build, before)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    assert main(["tiny-model", str(notes)]) == 1
    assert f"tempa: error: {notes} is not empty; choose an empty or new folder" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]


def test_tiny_model_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from tempa.recipes.tiny import write_tiny_default

    a = load_file(str(write_tiny_default(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(write_tiny_default(tmp_path / "b") / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_wheel_ships_recipes_configs_templates_and_data(tmp_path):
    """Shipped recipes, configs, templates and sample data must work from a wheel, not only a checkout."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "src"  # build from a copy: setuptools writes build/ next to the sources
    for name in tracked.splitlines():
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("tempa-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # every file of recipes/ (a shipped recipe reads its data, configs and cards from there, in subfolders too:
    # `data/*.jsonl` left out data/preferences/, which the 70B recipe's tiny profile reads), and the templates
    expected = [f"tempa/{name}" for name in tracked.splitlines()
                if name.startswith("recipes/") or (name.startswith("chat_templates/") and name.endswith(".jinja"))]
    expected.append("tempa/sft/train_worker.py")
    missing = [name for name in expected if name not in names]
    assert not missing, missing
    assert not any(name.startswith("tempa/tests") or name.startswith("tests/") for name in names)


def test_unexpected_failure_is_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    assert main(["export", "gguf", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tempa: error: ") and "-v" in err
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises, -v lets it through
        main(["-v", "export", "gguf", str(folder)])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "demo", "--mfu", "0.5"], "--mfu 0.5 needs --hardware"),
        (["plan", "demo", "--hardware", "0xH100"], "the GPU count must be at least 1"),
        (["plan", "demo", "--hardware", "8xB300"], "expected COUNTxGPU such as 8xH100"),
        (["tiny-model", "{file}"], "is a file; give a folder"),
    ],
)
def test_bad_command_line_values_get_one_line(argv, expected, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([a.replace("{file}", str(afile)) for a in argv]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert afile.read_text() == "x"  # nothing written over
    assert captured.out == ""  # refused before anything prints (a bad --hardware came after the whole plan)


def test_hardware_count_separator_is_case_insensitive(capsys):
    assert main(["plan", "demo", "--hardware", "8XH100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "estimate for 8xH100" in out and "MFU 50%" in out


def test_sigterm_stops_the_training_group_and_says_how_to_resume(tmp_path, tiny_model_dir):
    """What SLURM and Kubernetes send before SIGKILL: it must behave like Ctrl-C."""
    import os
    import signal
    import time

    from sft_helpers import sft_recipe

    recipe = sft_recipe(tmp_path, tiny_model_dir, max_steps=10_000, save_steps=1_000)
    pid_file = tmp_path / "run" / "sft" / "logs" / "launch.pid"
    proc = subprocess.Popen([sys.executable, "-m", "tempa.recipes.cli", "run", str(recipe), "--run-dir",
                             str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not pid_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), "training never started"
        group = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1] == "tempa: interrupted; run the same command again to resume"
    with pytest.raises(ProcessLookupError):  # the training group is gone with the runner
        os.killpg(group, 0)
    # and the run says why it stopped after the terminal is gone (status showed only "interrupted")
    status = subprocess.run([sys.executable, "-m", "tempa.recipes.cli", "status", str(tmp_path / "run"), "--json"],
                            capture_output=True, text=True, check=True)
    row = next(row for row in json.loads(status.stdout) if row["name"] == "sft")
    assert row["state"] == "interrupted"
    assert row["note"].startswith("stopped by SIGTERM, from kill or a scheduler ending the job; "), row["note"]


def test_status_and_a_bad_recipe_answer_without_importing_torch(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text("name: x\nbase_model: tempa:tiny\nstages: [{name: sft, kind: sft}]\n")
    (run_dir / "sft" / "manifest.json").write_text('{"name": "sft", "kind": "sft", "status": "failed", "error": "boom", '
                                                    '"fingerprint": "f", "started_at": 0}')
    bad = tmp_path / "bad.yaml"  # wrong only in its data path; its `train:` block needs trl to check
    bad.write_text("name: x\nbase_model: tempa:tiny\nstages:\n  - {name: s, kind: sft, data: {sources: "
                   "[{name: r, path: nope.jsonl}]}, train: {learning_rate: 1.0e-3}}\n")
    child = textwrap.dedent(f"""
        import contextlib, io, sys
        from tempa.recipes.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            codes = (main(["status", {str(run_dir)!r}, "--json"]), main(["plan", {str(bad)!r}]))
        heavy = sorted(m for m in ("torch", "transformers", "trl", "datasets") if m in sys.modules)
        print(codes, heavy, "boom" in out.getvalue(), "nope.jsonl" in out.getvalue())
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "(0, 1) [] True True", done.stderr[-2000:]


def test_plan_names_the_model_each_stage_starts_from(tmp_path, capsys):
    """A stage after one that makes no model (synthesize, evaluate) starts from the model before it: the plan
    names that model and the stages it passes through."""
    demo = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    assert main(["plan", str(demo), "--run-dir", str(tmp_path / "run")]) == 0
    rows = {line.split("│")[2].strip(): line.split("│")[4].strip()
            for line in capsys.readouterr().out.splitlines() if line.count("│") > 6}
    assert rows["sft-general"] == "base model" and rows["sft-reasoning"] == "sft-general's model"
    assert rows["sft-distill"] == "sft-reasoning's model (via distill)"
    assert rows["bake"] == "merge's model"


def test_status_names_the_kind_of_a_stage_that_has_not_started(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text(
        "name: x\nbase_model: tempa:tiny\nstages: [{name: sft, kind: sft}, {name: align, kind: preference}]\n")
    (run_dir / "sft" / "manifest.json").write_text('{"name": "sft", "kind": "sft", "status": "failed", "error": "boom", '
                                                    '"fingerprint": "f", "started_at": 0}')
    assert main(["status", str(run_dir), "--json"]) == 0
    rows = {row["name"]: (row["kind"], row["state"]) for row in json.loads(capsys.readouterr().out)}
    assert rows == {"sft": ("sft", "failed"), "align": ("preference", "pending")}


def test_status_shows_the_paid_requests_of_a_stage_with_many_metrics(tmp_path, capsys):
    """A synthesize stage's api_requests come after its own metrics, past the five the table shows (a trial: status
    showed them for translate, not for synthesize)."""
    run_dir = tmp_path / "run"
    (run_dir / "distill").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text(
        "name: x\nbase_model: tempa:tiny\nstages: [{name: distill, kind: synthesize}]\n")
    metrics = {"rows": 40, "prompts": 40, "kept_prompts": 38, "samples": 80, "truncated": 2, "judged": 80,
               "api_requests": 120, "api_retries": 3}
    (run_dir / "distill" / "manifest.json").write_text(json.dumps(
        {"name": "distill", "kind": "synthesize", "status": "done", "fingerprint": "f", "started_at": 0,
         "result": {"metrics": metrics}}))
    (run_dir / "distill" / "DONE").write_text(json.dumps({"fingerprint": "f"}))
    assert main(["status", str(run_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "api_requests=120" in out and "judged=" not in out, out


def test_status_shows_an_error_with_brackets_as_it_is(tmp_path, capsys):
    """A stage failed on gloo's "[/__w/pytorch/.../pair.cc:553] Connection closed by peer": `tempa status` died with
    rich's MarkupError (the moment an on-call engineer runs it), and torch.save's "[enforce fail at ...]" and a
    "[rank0]:" prefix vanished from the table (read as style tags)."""
    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text("name: x\nbase_model: tempa:tiny\nstages: [{name: sft, kind: sft}]\n")
    error = ("training process exited with code 1: RuntimeError: [/__w/pytorch/third_party/gloo/pair.cc:553] "
             "Connection closed by peer; [rank0]: RuntimeError: [enforce fail at inline_container.cc:659] .")
    (run_dir / "sft" / "manifest.json").write_text(json.dumps(
        {"name": "sft", "kind": "sft", "status": "failed", "error": error, "fingerprint": "f", "started_at": 0}))
    assert main(["status", str(run_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for part in ("[/__w/pytorch/third_party/gloo/pair.cc:553]", "[rank0]:", "[enforce fail at inline_container.cc:659]"):
        assert part in out, out


def test_verbose_is_taken_after_the_command_and_a_bad_mfu_before_the_plan_prints(capsys):
    """Errors end "(run with -v for the traceback)", but `tempa plan demo -v` was "unrecognized arguments: -v"; and
    `--mfu 1.5` was refused after 211 lines of plan."""
    from tempa.recipes.cli import _parser

    parser = _parser()
    assert parser.parse_args(["plan", "demo", "-v"]).verbose is True
    assert parser.parse_args(["-v", "plan", "demo"]).verbose is True
    assert parser.parse_args(["plan", "demo"]).verbose is False
    assert parser.parse_args(["template", "render", "--messages", "m.json", "--verbose"]).verbose is True
    assert parser.parse_args(["export", "gguf", "final", "-v"]).verbose is True
    assert main(["plan", "demo", "--hardware", "8xH100", "--mfu", "1.5"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "tempa: error: --mfu 1.5: expected a fraction in (0, 1], e.g. 0.4"


def test_plan_says_how_many_requests_each_http_server_will_get(tmp_path, capsys):
    """The plan said nothing of what a stage asks of a paid API ("not in the hours: gen-tl (generate_prompts)"),
    though the counts follow from the recipe: a user had no number to check a bill against."""
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Soal {i}?"}) + "\n" for i in range(7)))
    server = "{type: http, base_url: 'http://127.0.0.1:9/v1', model: %s%s}"
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: api
        base_model: "tempa:tiny"
        stages:
          - name: gen
            kind: generate_prompts
            topics: [makanan, sejarah]
            per_topic: 5
            language: id
            teacher: {{backend: {server % ("writer", "")}}}
          - name: synth
            kind: synthesize
            prompts: {{path: prompts.jsonl}}
            teacher: {server % ("teacher", ", supports_n: false")}
            sampling: {{n: 3}}
            rewards: [{{type: judge, backend: {server % ("judge", "")}}}, {{type: length}}]
          - name: synth-n
            kind: synthesize
            prompts: {{path: prompts.jsonl, limit: 4}}
            teacher: {server % ("teacher", "")}
            sampling: {{n: 3}}
            rewards: [{{type: length}}]
          - name: tr
            kind: translate
            source: {{path: prompts.jsonl}}
            target_language: th
            turns: all
            teacher: {{backend: {server % ("translator", "")}}}
        """))
    assert main(["plan", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines() if line.startswith("API requests")]
    assert lines == [
        "API requests stage 'gen': writer (teacher.backend), model writer: up to 10 requests, one per prompt "
        "(2 topics x per_topic 5)",
        "API requests stage 'synth': teacher, model teacher: up to 21 requests, one per sample (3 a prompt: "
        "supports_n is false), for 7 prompts",
        "API requests stage 'synth': judge 'judge' (rewards[0].backend), model judge: up to 21 requests, one per "
        "sample (fewer: samples cut off or empty are not judged)",
        "API requests stage 'synth-n': teacher, model teacher: up to 4 requests, one per prompt (3 samples each, as "
        "`n`), for 4 prompts",
        "API requests stage 'tr': translator (teacher.backend), model translator: an unknown number of requests, one "
        "per turn translated (a row has several), for 7 rows",
    ]


def test_a_plain_plan_warns_of_a_schedule_longer_than_max_steps(tmp_path, capsys):
    """warmup_stable_decay decaying over 10 steps of a 4-step stage was said at the run's start and by `plan
    --hardware`, not by a plain `tempa plan` (the README's own example, a new user's trial)."""
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}) + "\n" for i in range(8)))

    def plan(decay: str) -> str:
        (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
            name: wsd
            base_model: "tempa:tiny"
            stages:
              - name: sft
                kind: sft
                data: {{sources: [{{name: rows, path: rows.jsonl}}]}}
                train: {{max_steps: 4, lr_scheduler_type: warmup_stable_decay,
                         lr_scheduler_kwargs: {{num_decay_steps: {decay}}}}}
            """))
        assert main(["plan", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
        return " ".join(capsys.readouterr().out.split())

    shown = plan("10")
    assert "warning: stage 'sft' (max_steps 4): warmup_stable_decay warms up over " in shown
    assert "decays over 10 steps (num_decay_steps), more than the 4 steps it trains" in shown
    assert "warmup_stable_decay warms up" not in plan("0.2")
