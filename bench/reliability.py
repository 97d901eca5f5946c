"""Reliability suite: kill-and-resume trials and a table of bad inputs, run as a user would.

Not a test (outside CI's pass/fail); it prints what it measured and writes it as JSON.

Kill and resume: a short recipe (two SFT stages, then the bake) runs once uninterrupted; then
each trial starts it, waits for a moment of the run (in turn: start-up, each stage's data
preparation, each stage's training, a checkpoint being written, the bake), kills it a random
0-3 s into that moment (SIGKILL of the runner's whole process group, SIGTERM or SIGINT, in
turn), and runs the same command again. A trial passes when
the second run exits 0 with every stage done, the final model loads and generates in both
thinking modes, the final folder is publishable (``tempa.merge.publish``), every source row is
either trained on, held out or a reject (the data has bad lines on purpose), the killed run's
training group did not outlive it, and nothing was written outside the run directory and the
caches. For SIGTERM/SIGINT it also records whether the runner said how to resume and exited
143/130.

Bad inputs: every case of ``tests/bad_inputs.py`` as a ``tempa`` subprocess in a fresh sandbox
(HOME, TMPDIR, cache inside it; a 6 GiB address-space cap): exit code 1, one ``tempa: error``
line with the expected text, no traceback, and no file written outside the run directory and
the caches.

    python bench/reliability.py                     # 20 trials + 82 inputs: ~1 h on 2 busy CPU cores
    python bench/reliability.py --trials 3 --quick  # a smoke run
    python bench/reliability.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the bad-input table's one home

from bad_inputs import CASES, Case  # noqa: E402

MEMORY_CAP = 6 << 30  # address space per bad-input run: an alias bomb that got through would stop here
INTERRUPTED = "tempa: interrupted; run the same command again to resume"

RECIPE = """\
name: reliability
base_model: "tempa:tiny"
seed: 7
launch: {use_cpu: true}
stages:
  - name: warmup
    kind: sft
    data: {heldout: 4, sources: [{name: rows, path: rows.jsonl, thinking_mode: "off"}]}
    train: {max_steps: 6, learning_rate: 1.0e-3, per_device_train_batch_size: 4, max_length: 256,
            logging_steps: 2, save_steps: 3}
  - name: main
    kind: sft
    data: {sources: [{name: rows, path: rows.jsonl, thinking_mode: mixed, thinking_ratio: 0.5}]}
    train: {max_steps: 24, learning_rate: 1.0e-3, per_device_train_batch_size: 2, max_length: 256,
            logging_steps: 4, save_steps: 4, save_total_limit: 2}
"""


# --------------------------------------------------------------------------- sandboxes


@dataclass
class Sandbox:
    root: Path

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    @property
    def run_dir(self) -> Path:
        return self.ws / "run"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def hf_home(self) -> Path:
        return self.root / "home" / ".cache" / "huggingface"

    def make(self) -> Sandbox:
        for folder in (self.ws, self.cache, self.hf_home, self.root / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / "precious").mkdir()
        (self.root / "precious" / "notes.txt").write_text("a user's file beside the run\n")
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.root / "home"), TMPDIR=str(self.root / "tmp"), TEMPA_CACHE=str(self.cache),
            HF_HOME=str(self.hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
            DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
        )
        return env

    def allowed(self) -> list[Path]:
        """Where tempa may write: the run directory and the caches (tempa's, Hugging Face's)."""
        return [self.run_dir, self.cache, self.hf_home]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        allowed = [str(p) for p in self.allowed()]
        out = {}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in allowed]
            for name in files:
                path = os.path.join(folder, name)
                stat = os.lstat(path)
                out[os.path.relpath(path, self.root)] = (stat.st_size, stat.st_mtime_ns)
        return out


def outside_writes(before: dict, after: dict) -> list[str]:
    changed = [p for p in after if before.get(p) != after[p]]
    return sorted(changed + [f"deleted {p}" for p in before if p not in after])


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def tempa(argv: list[str], box: Sandbox, *, new_session: bool = False) -> subprocess.Popen:
    """``tempa ARGV`` in the sandbox; a run to be killed gets its own process group (no memory cap)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tempa.recipes.cli", *argv], cwd=box.ws, env=box.env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session,
        preexec_fn=None if new_session else _limit_memory,
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``proc`` (-999 when it ran past ``timeout``)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -999, out, err + "\n[bench] timed out"
    return proc.returncode, out, err


# --------------------------------------------------------------------------- bad inputs


@dataclass
class InputResult:
    id: str
    kind: str
    ok: bool
    code: int
    seconds: float
    error: str
    problems: list[str] = field(default_factory=list)


def run_case(case: Case, base: Path) -> InputResult:
    box = Sandbox(Path(tempfile.mkdtemp(prefix=f"{case.id}-", dir=base))).make()
    argv = case.build(box.ws)
    before = box.snapshot()
    started = time.monotonic()
    code, _, err = finish(tempa(argv, box), timeout=900)
    seconds = time.monotonic() - started
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tempa: error:")]
    problems = []
    if code != 1:
        problems.append(f"exit code {code}")
    if len(errors) != 1 or not lines or lines[-1] != errors[0]:
        problems.append(f"{len(errors)} error lines, last line {lines[-1][:120] if lines else 'none'!r}")
    if "Traceback" in err:
        problems.append("traceback")
    if errors and case.expect not in errors[0]:
        problems.append(f"expected {case.expect!r}")
    written = outside_writes(before, box.snapshot())
    if written:
        problems.append(f"wrote outside the run dir and caches: {written[:5]}")
    return InputResult(case.id, case.kind, not problems, code, round(seconds, 2),
                       errors[0][len("tempa: error: "):] if errors else "", problems)


# --------------------------------------------------------------------------- kill and resume


@dataclass
class TrialResult:
    trial: int
    signal: str
    kill_at_s: float
    stage_at_kill: str
    ok: bool
    killed_code: int
    said_how_to_resume: bool | None
    rerun_code: int
    rerun_s: float
    rows: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def write_data(ws: Path) -> int:
    """64 good conversations and 3 bad lines (not UTF-8, not JSON, blank); returns the good count."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sft_helpers import write_rows

    write_rows(ws / "good.jsonl", n=64, seed=1)
    lines = (ws / "good.jsonl").read_bytes().splitlines(keepends=True)
    lines.insert(10, b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    lines.insert(20, b'{"messages": [\n')
    lines.insert(30, b"\n")
    (ws / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
    (ws / "good.jsonl").unlink()
    (ws / "recipe.yaml").write_text(RECIPE)
    return 64


def running_stage(run_dir: Path) -> str:
    from tempa.sft.files import json_or_none

    for name in ("warmup", "main", "bake"):
        manifest = json_or_none(run_dir / name / "manifest.json") or {}
        if manifest.get("status") == "running":
            return name
    if not (run_dir / "warmup" / "manifest.json").exists():
        return "startup/tokenizer"
    return "between stages"


def group_alive(run_dir: Path) -> bool:
    for pid_file in run_dir.glob("*/logs/launch.pid"):
        try:
            os.killpg(int(pid_file.read_text()), 0)
            return True
        except (ProcessLookupError, ValueError, OSError):
            continue
    return False


def check_run(box: Sandbox, good_rows: int) -> tuple[list[str], dict[str, Any]]:
    """Everything a finished run must satisfy; returns (problems, row counts)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tempa.merge.publish import publish_problems
    from tempa.sft.data_report import DataMix

    problems: list[str] = []
    status = subprocess.run([sys.executable, "-m", "tempa.recipes.cli", "status", str(box.run_dir), "--json"],
                            capture_output=True, text=True, env=box.env(), cwd=box.ws)
    states = {row["name"]: row["state"] for row in json.loads(status.stdout or "[]")}
    if states != {"warmup": "done", "main": "done", "bake": "done"}:
        problems.append(f"states {states}")
    final = box.run_dir / "final"
    try:
        tokenizer = AutoTokenizer.from_pretrained(final)
        model = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)
        for mode in ("on", "off"):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": "Ulangi: satu dua"}], thinking_mode=mode,
                                                add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=4, do_sample=False)
            if out.shape[1] <= ids["input_ids"].shape[1]:
                problems.append(f"generated nothing with thinking {mode}")
    except Exception as exc:  # any failure to load is the finding
        problems.append(f"final model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    problems += [f"not publishable: {p}" for p in publish_problems(final)] if final.is_dir() else []
    rows: dict[str, Any] = {}
    for stage in ("warmup", "main"):
        mix_file = box.run_dir / stage / "data" / "mix.json"
        source = next((s for s in DataMix.read(mix_file).sources if s.name == "rows"), None) if mix_file.is_file() \
            else None
        rows_in = source.rows_in if source else None
        rejects = {k: v for k, v in (source.rejects if source else {}).items() if not k.endswith("_turn")}
        accounted = (source.rows_kept + source.heldout_rows if source else 0) + sum(rejects.values())
        rows[stage] = {"rows_in": rows_in, "accounted": accounted, "rejects": rejects}
        if rows_in != good_rows + 2 or accounted != rows_in:
            problems.append(f"{stage}: rows {rows[stage]} (expected {good_rows + 2} in, all accounted for)")
    return problems, rows


def reference_run(base: Path) -> float:
    box = Sandbox(Path(tempfile.mkdtemp(prefix="reference-", dir=base))).make()
    good = write_data(box.ws)
    started = time.monotonic()
    code, _, err = finish(tempa(["run", "recipe.yaml", "--run-dir", "run"], box, new_session=True), timeout=1800)
    seconds = time.monotonic() - started
    problems, _ = check_run(box, good)
    if code != 0 or problems:
        raise SystemExit(f"the uninterrupted reference run failed (exit {code}): {problems} {err[-1500:]}")
    return seconds


SIGNALS = ("SIGKILL-group", "SIGTERM", "SIGINT")


def _running(run_dir: Path, stage: str) -> bool:
    from tempa.sft.files import json_or_none

    return (json_or_none(run_dir / stage / "manifest.json") or {}).get("status") == "running"


def _training(run_dir: Path, stage: str) -> bool:
    return _running(run_dir, stage) and (run_dir / stage / "logs" / "launch.pid").exists()


def _saving(run_dir: Path) -> bool:
    """A checkpoint folder without its COMPLETE marker: the Trainer is writing it."""
    return any(not (p / "COMPLETE").exists() for p in (run_dir / "main" / "checkpoints").glob("checkpoint-*"))


# The moments a trial kills in (each a test on the run directory), in turn.
MOMENTS = {
    "start-up": lambda run: True,
    "warmup data": lambda run: _running(run, "warmup") and not _training(run, "warmup"),
    "warmup training": lambda run: _training(run, "warmup"),
    "main data": lambda run: _running(run, "main") and not _training(run, "main"),
    "main training": lambda run: _training(run, "main"),
    "checkpoint save": _saving,
    "bake": lambda run: _running(run, "bake"),
}


def kill_trial(trial: int, base: Path, full_s: float, rng: random.Random) -> TrialResult:
    kind = SIGNALS[trial % len(SIGNALS)]
    moment = list(MOMENTS)[trial % len(MOMENTS)]
    box = Sandbox(Path(tempfile.mkdtemp(prefix=f"trial{trial}-", dir=base))).make()
    good = write_data(box.ws)
    before = box.snapshot()
    delay = 0.0 if moment == "checkpoint save" else rng.uniform(0.0, 3.0)
    proc = tempa(["run", "recipe.yaml", "--run-dir", "run"], box, new_session=True)
    started = time.monotonic()
    while proc.poll() is None and not MOMENTS[moment](box.run_dir) and time.monotonic() - started < 3 * full_s:
        time.sleep(0.02)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    kill_at = time.monotonic() - started
    stage = f"{moment} ({running_stage(box.run_dir)})" if proc.poll() is None else f"{moment}: finished before the kill"
    if proc.poll() is None:
        if kind == "SIGKILL-group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(getattr(signal, kind))
    code, _, err = finish(proc, timeout=300)
    problems = []
    said = None
    if kind != "SIGKILL-group" and "finished before" not in stage:
        expected = 128 + getattr(signal, kind)
        said = err.strip().splitlines()[-1:] == [INTERRUPTED] and code == expected
    deadline = time.monotonic() + 30
    while group_alive(box.run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(box.run_dir):
        problems.append("the killed run's training group was still alive 30 s later")
    started = time.monotonic()
    rerun_code, _, rerun_err = finish(tempa(["run", "recipe.yaml", "--run-dir", "run"], box, new_session=True),
                                      timeout=1800)
    rerun_s = time.monotonic() - started
    if rerun_code != 0:
        problems.append(f"re-run exited {rerun_code}: {rerun_err.strip().splitlines()[-1:]}")
    checked, rows = check_run(box, good)
    problems += checked
    written = outside_writes(before, box.snapshot())
    if written:
        problems.append(f"wrote outside the run dir and caches: {written[:5]}")
    return TrialResult(trial, kind, round(kill_at, 1), stage, not problems, code, said, rerun_code,
                       round(rerun_s, 1), rows, problems)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="only the fast bad inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-inputs", action="store_true")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="tempa-reliability-"))
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "load_average_start": os.getloadavg()}
    print(f"[bench] sandboxes under {base}", flush=True)

    def save() -> None:  # after every case and trial: a long run interrupted still leaves its numbers
        if args.json:
            args.json.write_text(json.dumps({**report, "load_average_now": os.getloadavg()}, indent=2) + "\n")

    if not args.skip_inputs:
        cases = [c for c in CASES if c.fast or not args.quick]
        results = []
        for case in cases:
            result = run_case(case, base)
            results.append(result)
            report["inputs"] = [asdict(r) for r in results]
            save()
            mark = "ok " if result.ok else "BAD"
            print(f"[input] {mark} {case.id:32s} {result.seconds:6.1f}s  {result.error[:110]}"
                  + (f"  PROBLEMS: {result.problems}" if result.problems else ""), flush=True)
        by_kind: dict[str, list[int]] = {}
        for r in results:
            by_kind.setdefault(r.kind, [0, 0])[0] += r.ok
            by_kind[r.kind][1] += 1
        report["inputs_summary"] = {"ok": sum(r.ok for r in results), "total": len(results), "by_kind": by_kind,
                                    "median_s": sorted(r.seconds for r in results)[len(results) // 2]}
        print(f"[input] {report['inputs_summary']}", flush=True)

    if args.trials:
        full_s = reference_run(base)
        report["reference_run_s"] = round(full_s, 1)
        print(f"[kill] uninterrupted reference run: {full_s:.1f}s", flush=True)
        rng = random.Random(args.seed)
        trials = []
        for trial in range(args.trials):
            result = kill_trial(trial, base, full_s, rng)
            trials.append(result)
            report["trials"] = [asdict(t) for t in trials]
            save()
            print(f"[kill] {'ok ' if result.ok else 'BAD'} #{trial:02d} {result.signal:13s} at {result.kill_at_s:5.1f}s "
                  f"({result.stage_at_kill}); killed exit {result.killed_code}, resume message "
                  f"{result.said_how_to_resume}; re-run {result.rerun_s:.0f}s"
                  + (f"  PROBLEMS: {result.problems}" if result.problems else ""), flush=True)
        report["trials_summary"] = {
            "ok": sum(t.ok for t in trials), "total": len(trials),
            "stages_at_kill": sorted({t.stage_at_kill for t in trials}),
            "resume_message": f"{sum(bool(t.said_how_to_resume) for t in trials)}/"
                              f"{sum(t.said_how_to_resume is not None for t in trials)}",
        }
        print(f"[kill] {report['trials_summary']}", flush=True)
    report["load_average_end"] = os.getloadavg()
    save()
    bad = [r for r in report.get("inputs", []) if not r["ok"]] + [t for t in report.get("trials", []) if not t["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
