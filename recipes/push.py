"""`tempa push RUN_DIR --repo ORG/NAME`: upload a finished run's final model to the Hugging Face Hub.

What goes up is the final folder (``RUN_DIR/final``: weights, tokenizer with the baked template,
generation config, model card) in one commit, made with huggingface_hub's own
``CommitOperationAdd`` / ``create_commit``; the GGUFs and their Ollama Modelfiles (``NAME-TYPE.Modelfile``
beside ``NAME-TYPE.gguf``) only with ``--gguf``, which refuses one without the other (an export stopped part-way),
and a folder with no GGUF exported. Never intermediate checkpoints or stage folders, never hidden files, and only a
folder that :func:`tempa.merge.publish.publish_problems` finds clean (no pickles, no local path or
secret in its text, every file the bake wrote) and whose stages are all complete and current, with a
card whose metadata the Hub accepts (licence ids, ISO 639 languages). The card's usage snippet
names the repo. The token is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``); tempa
only asks whether there is one (a push without one stops before any call) and never logs it; a token the Hub
refuses (401/403) is named as the cause, in one line. Without
``--private`` the repo gets the Hub's default visibility (public, or an organisation's private default);
with it, a repo that already exists and is public is refused (the Hub would not make it private).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tempa.chat_templates.one_line import first_line
from tempa.merge.gguf_export import EXPORT_FILES, SHARED_MODELFILE
from tempa.merge.model_card import USAGE_PLACEHOLDER, card_front_matter, hub_metadata_problems
from tempa.merge.publish import publish_problems
from tempa.sft.run_layout import FINAL_LINK
from tempa.sft.stage_api import StageError

if TYPE_CHECKING:  # the runner imports this module: it is imported where it is used
    from tempa.recipes.runner import StageStatus

CARD = "README.md"


@dataclass(frozen=True)
class PushFile:
    path_in_repo: str
    local: Path
    size: int


def run_status(run_dir: Path) -> list[StageStatus]:
    """Each stage's state (`tempa status`), in the order of the recipe the run ran, read without validating it.

    `tempa status`, `tempa export`'s warning and `tempa push`'s refusal all read this one list: from the manifests
    alone, a stage whose folder was deleted was no stage at all, and push took a run that export warned of."""
    from tempa.recipes.runner import stage_status

    recorded = _recorded_stages(run_dir)
    return stage_status(list(recorded) if recorded is not None else None, run_dir, kinds=recorded)


def _recorded_stages(run_dir: Path) -> dict[str, str] | None:
    """The stages the run's recipe.resolved.yaml records, in order, with their kinds; None when it cannot be read
    (the manifests still tell the story)."""
    from tempa.recipes.rundir import resolved_recipe

    try:
        recorded = {stage["name"]: stage.get("kind") for stage in (resolved_recipe(run_dir) or {})["stages"]}
    except (AttributeError, KeyError, TypeError):
        return None
    if not all(isinstance(name, str) and isinstance(kind, str) for name, kind in recorded.items()):
        return None
    return recorded


def unfinished_stages(run_dir: Path) -> list[str]:
    """``name (state)`` of each stage of the run that is not complete and current (:func:`run_status`)."""
    return [f"{row.name} ({row.state})" for row in run_status(run_dir) if row.state != "done"]


def stage_holding(path: Path, run_dir: Path) -> StageStatus | None:
    """The state (:func:`run_status`) of the stage of ``run_dir`` whose folder ``path`` lies in (its final/ folder, a
    GGUF there), or None where it lies in none (the run's report/, say)."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(top := Path(os.path.realpath(run_dir))) or real == top:
        return None
    name = real.relative_to(top).parts[0]
    return next((row for row in run_status(run_dir) if row.name == name), None)


def final_folder(run_dir: Path) -> Path:
    """The run's final model folder, refused unless every stage is complete and current, and it is publishable."""
    from tempa.recipes.rundir import refuse_while_running, require_run_dir

    require_run_dir(Path(run_dir))  # a stage's folder, or none of a run: said as status says it
    refuse_while_running(Path(run_dir), "push")
    folder = Path(run_dir) / FINAL_LINK
    if not (folder / "config.json").is_file():
        raise StageError(f"{run_dir}: no final model ({folder}); finish the run first (tempa run)")
    if not folder.resolve().is_relative_to(Path(run_dir).resolve()):
        raise StageError(f"{folder} points outside the run folder (to {folder.resolve()}); the run's final model is "
                         "its last stage's final/ folder: run `tempa run` again to restore the link")
    unfinished = unfinished_stages(Path(run_dir))
    if unfinished:
        raise StageError(f"{run_dir}: not every stage is complete and current: {', '.join(unfinished)}; "
                         "run `tempa run` first so that the final model is what the recipe says")
    problems = publish_problems(folder)
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise StageError(f"{folder}: not publishable as it is: {shown}")
    return folder.resolve()


def unpaired_gguf_files(folder: Path) -> list[str]:
    """The GGUFs of ``folder`` without the Modelfile an export writes beside them (one whose template has no Go twin
    gets none, by design), and the Modelfiles whose GGUF is not there: an export stopped part-way, or a file removed
    since. The export writes the Modelfile first and renames the GGUF into place last."""
    from tempa.merge.gguf_export import baked_template, gguf_chat_template, modelfile_for

    problems = []
    for gguf in sorted(folder.glob("*.gguf")):
        if modelfile_for(gguf).is_file():
            continue
        try:
            embedded = gguf_chat_template(gguf)
        except Exception as error:  # gguf's reader raises anything (ValueError, IndexError...) on a file cut short
            problems.append(f"{gguf.name}: not a readable GGUF ({first_line(error)})")
            continue
        if embedded and baked_template(embedded) is not None:
            problems.append(f"{gguf.name}: its Modelfile {modelfile_for(gguf).name} is missing")
    for modelfile in sorted(folder.glob("*.Modelfile")):
        if not modelfile.with_name(f"{modelfile.stem}.gguf").is_file():
            problems.append(f"{modelfile.name}: its GGUF {modelfile.stem}.gguf is missing")
    return problems


def push_files(folder: Path, *, include_gguf: bool = False) -> list[PushFile]:
    """The files of ``folder`` that go up, by their path in the repo."""
    if include_gguf and (folder / SHARED_MODELFILE).is_file():
        raise StageError(f"{folder / SHARED_MODELFILE}: the one Modelfile an earlier tempa's exports shared, of one of "
                         "the GGUFs (each now has its own NAME-TYPE.Modelfile beside it); delete it before --gguf "
                         "uploads it beside them, and export again if a GGUF lacks its own")
    if include_gguf and (unpaired := unpaired_gguf_files(folder)):
        raise StageError(f"{folder}: --gguf uploads each GGUF with its Modelfile: {'; '.join(unpaired)} (an export "
                         "stopped part-way?); run the export again (tempa export gguf), or delete the file")
    if include_gguf and not any(folder.glob("*.gguf")):
        raise StageError(f"{folder}: --gguf uploads the GGUFs exported into it, and there is none; export one first "
                         f"(tempa export gguf {folder}), or push without --gguf")
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_symlink() or any(parent.is_symlink() for parent in path.parents if parent != folder and
                                    parent.is_relative_to(folder)):
            continue  # never a file from outside the folder (publish_problems refuses a folder with links)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue  # hidden files: partial writes, editor and OS leftovers
        if not include_gguf and any(rel.match(pattern) for pattern in EXPORT_FILES):
            continue
        files.append(PushFile(rel.as_posix(), path, path.stat().st_size))
    return files


def _card_loads(folder: Path) -> str | None:
    # The repo the card's usage snippet loads (model_card.model_id, or the placeholder a push fills in).
    card = folder / CARD
    found = re.search(r'^model_id = "([^"\n]*)"$', card.read_text(encoding="utf-8"), re.M) if card.is_file() else None
    return found.group(1) if found else None


def card_text(folder: Path, repo: str) -> str:
    """The model card as it goes up: its usage snippet loads the repo."""
    return (folder / CARD).read_text(encoding="utf-8").replace(USAGE_PLACEHOLDER, repo)


def commit_operations(folder: Path, files: list[PushFile], repo: str) -> list:
    """huggingface_hub's operations for one commit of ``files``."""
    from huggingface_hub import CommitOperationAdd

    return [CommitOperationAdd(path_in_repo=f.path_in_repo,
                               path_or_fileobj=card_text(folder, repo).encode() if f.path_in_repo == CARD else f.local)
            for f in files]


def check_repo_id(repo: str) -> None:
    """``repo`` must be ORG/NAME as the Hub accepts it (huggingface_hub's own rules), checked before anything else:
    a dry run that lists the files for a name the Hub refuses promises an upload that cannot happen."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise StageError(f"--repo {repo!r}: expected ORG/NAME")
    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise StageError(f"--repo {repo!r} is not a Hugging Face repo id: {first_line(error)}") from None


def check_card_metadata(folder: Path) -> None:
    """The card's metadata must be what the Hub accepts (:func:`~tempa.merge.model_card.hub_metadata_problems`): the
    Hub refuses the commit otherwise, after the repo is made. The recipe's was checked when it loaded; a card edited
    since, or baked by an older tempa, is checked here."""
    card = folder / CARD
    try:
        front = card_front_matter(card.read_text(encoding="utf-8"))
    except ValueError as error:
        raise StageError(f"{card}: the Hub would refuse this model card: {error}") from None
    problems = hub_metadata_problems(front.get("license"), front.get("license_name"), front.get("language"))
    if problems:
        raise StageError(f"{card}: the Hub would refuse this model card's metadata: {'; '.join(problems)}; set "
                         "model_card in the recipe and run the bake again (tempa run), or edit the card")


def push(run_dir: Path, repo: str, *, include_gguf: bool = False, private: bool = False,
         dry_run: bool = False, message: str | None = None) -> tuple[list[PushFile], str | None]:
    """Upload (or with ``dry_run`` only list) the final model; returns the files and the commit URL."""
    check_repo_id(repo)
    folder = final_folder(run_dir)
    files = push_files(folder, include_gguf=include_gguf)
    loads = _card_loads(folder)
    if loads not in (None, USAGE_PLACEHOLDER, repo):
        raise StageError(f"the model card's usage example loads {loads} (model_card.model_id), not {repo}: push to "
                         f"{loads}, or set model_card.model_id: {repo} (or remove it) and run the bake again")
    check_card_metadata(folder)
    if dry_run:
        return files, None
    from huggingface_hub import HfApi, get_token

    if get_token() is None:  # else the Hub's 401 comes after the calls, as an HTTP error
        raise StageError(f"no Hugging Face token to push {repo} with: set HF_TOKEN or run `hf auth login` "
                         "(--dry-run needs none)")
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        # None, not False, without --private: the Hub's default then applies (an organisation's may be private)
        api.create_repo(repo, private=True if private else None, exist_ok=True)
        if private and not api.model_info(repo).private:  # create_repo leaves an existing repo's visibility as it is
            raise StageError(f"--private: {repo} already exists and is public, so this upload would be public; make "
                             f"the repo private on the Hub first (its settings page), or push without --private")
        # (a read-only token passes create_repo on a repo it can read: the refusal comes with the commit)
        info = api.create_commit(repo, operations=commit_operations(folder, files, repo),
                                 commit_message=message or f"Upload {repo} (tempa)")
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status not in (401, 403):
            raise
        said = (error.server_message or "").strip()
        said = f": {said.splitlines()[0]}" if said else ""
        raise StageError(f"the Hub refused to create or write {repo} with your token (HTTP {status}{said}): check "
                         f"HF_TOKEN or `hf auth login`, and that the token may write to {repo.split('/')[0]}") from None
    return files, info.commit_url
