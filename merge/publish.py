"""A final model folder must be publishable as it is: this module makes it so and checks it.

``publish_problems(folder)`` lists what would stop someone from uploading the folder as it is
(the bake stage runs it on every final model, and ``tempa push`` again before an upload):

- every file has mode 0644 and every folder 0755 (``save_pretrained`` writes weights 0600);
- no pickled weights;
- no ``auto_map`` entry in config.json / tokenizer_config.json that names code the folder lacks
  (a base model with custom code, loaded without ``trust_remote_code``, leaves one behind);
- no absolute local path (``/home/me/data/x.jsonl``) and no token-shaped secret in the text files;
- nothing a user needs is missing: config, every weight shard whole, tokenizer, chat template, generation config
  and model card (a folder damaged after its bake would otherwise go up as it is), and every file the bake
  wrote (:data:`FINAL_RECORD`, its list of them: a copy or sync of final/ cut short lacks some).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tempa.alignment.model_files import pickle_files
from tempa.chat_templates.one_line import first_line
from tempa.merge.model_card import TOKEN_PATTERNS, local_paths
from tempa.sft.files import write_atomic

FILE_MODE, DIR_MODE = 0o644, 0o755
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")
_TEXT_SUFFIXES = (".json", ".md", ".jinja", ".txt", ".yaml", ".yml", ".py")
# What loading with the Auto classes, chatting in either thinking mode and stopping at the end of a turn need, beside
# the weights; the tokenizer's vocabulary is in one of TOKENIZER_VOCAB_FILES.
REQUIRED_FILES = ("config.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "README.md")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model")
WEIGHTS_INDEX = "model.safetensors.index.json"
# The bake's list of the files it wrote (name -> size), written last into the folder it renames to final/ (the runner
# writes one into every other stage's model folder as the stage completes): a copy or sync of final/ cut short, one
# left by a killed rewrite, or a file deleted since lacks a file it lists; `tempa status` and the runner's skip check
# it too. Hidden, so it stays with the run (push skips hidden files).
FINAL_RECORD = ".tempa-final.json"
NO_WEIGHTS = "no *.safetensors weights"


def _auto_map_refs(entry: Any) -> list[str]:
    values = entry if isinstance(entry, list) else [entry]
    return [value for value in values if isinstance(value, str)]


def _resolves(ref: str, folder: Path) -> bool:
    """``modeling_x.XForCausalLM`` needs ``modeling_x.py`` here; ``org/repo--...`` points elsewhere."""
    if "--" in ref:
        return False
    module = ref.rsplit(".", 1)[0]
    return (folder / (module.replace(".", "/") + ".py")).is_file()


def dangling_auto_map(folder: Path) -> list[str]:
    """``file: key -> ref`` for each auto_map entry whose code is not in ``folder``."""
    out = []
    for name in AUTO_MAP_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
        for key, entry in auto_map.items():
            out += [f"{name}: auto_map {key} -> {ref}" for ref in _auto_map_refs(entry) if not _resolves(ref, folder)]
    return out


def prune_auto_map(folder: Path) -> list[str]:
    """Drop auto_map entries that name code the folder lacks; returns what was dropped."""
    dropped = dangling_auto_map(folder)
    for name in AUTO_MAP_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        auto_map = data.get("auto_map")
        if not isinstance(auto_map, dict):
            continue
        kept = {k: v for k, v in auto_map.items() if all(_resolves(ref, folder) for ref in _auto_map_refs(v))}
        if kept == auto_map:
            continue
        if kept:
            data["auto_map"] = kept
        else:
            data.pop("auto_map")
        path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return dropped


def normalize_modes(folder: Path) -> None:
    """0644 files and 0755 folders, whatever the writer's umask or mkstemp chose."""
    Path(folder).chmod(DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def make_publishable(folder: Path) -> list[str]:
    """Prune dangling auto_map entries and fix modes; returns the auto_map entries dropped."""
    dropped = prune_auto_map(folder)
    normalize_modes(folder)
    return dropped


def symlinks(folder: Path) -> list[str]:
    """The symbolic links inside ``folder`` (files and folders, never followed), by their relative path."""
    out = []
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
        out += [os.path.relpath(os.path.join(root, name), folder) for name in sorted(dirs + files)
                if os.path.islink(os.path.join(root, name))]
    return sorted(out)


def _chat_template_inline(folder: Path) -> bool:
    # Older writers keep the template in tokenizer_config.json rather than chat_template.jinja.
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def weight_problems(folder: Path) -> list[str]:
    """Weights that would not load: none at all, a shard the index names but the folder lacks, a safetensors file
    that is not whole (cut short by a full disk or an interrupted copy: its header says more than the file has)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    problems = []
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        problems.append(NO_WEIGHTS)
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            problems.append(f"{WEIGHTS_INDEX}: no readable weight_map ({type(error).__name__})")
            shards = []
        problems += [f"{shard}: named by {WEIGHTS_INDEX} but missing" for shard in shards
                     if not (folder / shard).is_file()]
    for path in files:
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as error:
            problems.append(f"{path.name}: not a whole safetensors file ({first_line(error)})")
    return problems


def write_final_record(folder: Path) -> None:
    """Write :data:`FINAL_RECORD`: every file of ``folder`` by name, with its size. The bake's last write."""
    folder = Path(folder)
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir())
             if path.is_file() and path.name != FINAL_RECORD}
    write_atomic(folder / FINAL_RECORD, json.dumps({"files": files}, indent=2) + "\n")


def record_problems(folder: Path) -> list[str]:
    """The files :data:`FINAL_RECORD` lists that ``folder`` lacks, and its weight files of another size; empty
    without a record (a folder tempa did not bake, or an older bake's). Other files are checked by name only: a
    model card or generation config edited by hand after the bake is still the user's to publish."""
    path = Path(folder) / FINAL_RECORD
    if not path.is_file():
        return []
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"{FINAL_RECORD}: not the bake's record of its files ({type(error).__name__}); run the bake again"]
    problems = []
    for name, size in sizes.items():
        file = Path(folder) / name
        if not file.is_file():
            problems.append(f"{name}: missing (the stage wrote it; deleted, or a copy cut short?)")
        elif name.endswith(".safetensors") and file.stat().st_size != size:
            problems.append(f"{name}: {file.stat().st_size} bytes, the stage wrote {size}")
    if problems:  # weights saved again on purpose (another dtype, other shards) are the user's to publish
        problems[-1] += f" (if you saved the weights again on purpose, delete {FINAL_RECORD})"
    return problems


def json_problems(folder: Path) -> list[str]:
    """The folder's JSON files that do not parse: a tokenizer.json or config.json cut short, or emptied, loads no
    better than a weight file cut short, and the record's names say nothing of it (other files are checked by name
    only, so that a model card edited by hand stays publishable)."""
    problems = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == FINAL_RECORD or not path.is_file():
            continue
        try:
            json.loads(path.read_bytes())
        except (OSError, ValueError) as error:
            problems.append(f"{path.name}: not readable JSON ({first_line(error)}; cut short?)")
    return problems


def whole_model_problems(folder: Path) -> list[str]:
    """Weights that would not load (:func:`weight_problems`), JSON files that do not parse (:func:`json_problems`) and
    what the bake's record says is gone (one line a file)."""
    problems = weight_problems(folder)
    for more in (json_problems(folder), record_problems(folder)):
        named = {problem.split(":", 1)[0] for problem in problems}
        problems += [problem for problem in more if problem.split(":", 1)[0] not in named]
    return problems


def missing_parts(folder: Path) -> list[str]:
    """What a user needs that ``folder`` lacks (:data:`REQUIRED_FILES`, a tokenizer vocabulary, whole weights, every
    file the bake wrote)."""
    folder = Path(folder)
    problems = [f"{name}: missing" for name in REQUIRED_FILES
                if not (folder / name).is_file() and not (name == "chat_template.jinja" and _chat_template_inline(folder))]
    if not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        problems.append(f"{' or '.join(TOKENIZER_VOCAB_FILES)}: missing")
    named = {problem.split(":", 1)[0] for problem in problems}
    return problems + [problem for problem in whole_model_problems(folder) if problem.split(":", 1)[0] not in named]


def publish_problems(folder: Path) -> list[str]:
    """Everything that stops ``folder`` from being uploaded as it is; empty when it is clean."""
    folder = Path(folder)
    problems = missing_parts(folder)
    # A link would upload whatever it points to (a key, a folder of the user's), and every check below
    # would judge the target; the folder tempa writes holds regular files only.
    links = symlinks(folder)
    problems += [f"{rel}: a symbolic link (to {os.readlink(folder / rel)}); only regular files are published"
                 for rel in links]
    if links:
        return problems
    for path in sorted([folder, *folder.rglob("*")]):
        mode = path.stat().st_mode & 0o777
        wanted = DIR_MODE if path.is_dir() else FILE_MODE
        if mode != wanted:
            problems.append(f"{path.relative_to(folder) if path != folder else '.'}: mode {mode:04o}, not {wanted:04o}")
    problems += [f"{name}: pickled weights" for name in pickle_files(folder)]
    problems += dangling_auto_map(folder)
    for path in sorted(folder.rglob("*")):
        # tokenizer.json is vocabulary, not prose: a token such as "/usr" is no path.
        if not path.is_file() or path.suffix.lower() not in _TEXT_SUFFIXES or path.name == "tokenizer.json":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{path.name}: local path {p}" for p in sorted(set(local_paths(text)))[:5]]
        problems += [f"{path.name}: secret-looking string" for pattern in TOKEN_PATTERNS if pattern.search(text)]
    return problems
